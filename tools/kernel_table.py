"""The speed table of kdlab/kernels/README.md from one GPU run's folder (tools/gpu-check's bench.json and
profile.log), so the figures written there come from the logs and not by hand.

    python tools/kernel_table.py kdlab/kernels/bench/2026-11-30-h200-3-final

For each benchmark row: Nsight Compute's duration of the fused kernel (the sum of attention's three
launches), its minimum traffic (read student and teacher, write the gradient: bench.json's own byte
count) over that duration as a percentage of the copy bandwidth measured in the same run, the forward
+ backward times (fused / torch.compile / eager, one call from an idle GPU; and the fused one enqueued
back to back where the run has it) and the op alone. Then, where the run profiled them
(``KDLAB_KERNELS=triton``), the Triton kernels beside the CUDA ones; and every Nsight run of the streaming rows
kernel with the block size it ran at (``KDLAB_KL_STREAM_THREADS``): duration, DRAM throughput, L2 hit rate.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SPEC = re.compile(r"^((?:kl|at):\S+): backend (\w+)(?:, KDLAB_KL_STREAM_THREADS=(\d+))?", re.M)
# "  [void ]name[<...>][(args)] (grid)x(block)": a Triton kernel's name has no parameter list
HEADER = r"^  (?:void )?{}(?:<[^\n]*>)?(?:\([^\n]*\))? \(\d+, \d+, \d+\)x"
REPORT = re.compile(HEADER.format(r"(\w+)") + r"[^\n]*\n(.*?)(?=" + HEADER.format(r"\w+") + r"|^==PROF== Connected|\Z)",
                    re.M | re.S)
UNITS = {"ns": 1e-3, "us": 1.0, "ms": 1e3}


def metric(text: str, name: str) -> float | None:
    """A metric's value from one kernel's Nsight report (durations in us), or None."""
    m = re.search(rf"^\s+{re.escape(name)}\s+(\S+)\s+([\d.,]+)\s*$", text, re.M)
    if m is None:
        return None
    value = float(m.group(2).replace(",", ""))
    return value * UNITS.get(m.group(1), 1.0) if name == "Duration" else value


def nsight_runs(log: str) -> list[list[tuple[str, str, str | None, list[str]]]]:
    """Per ncu process in profile.log: ``[(spec, backend, stream threads, [kernel report, ...]), ...]``. The op runs
    once a spec (tools/profile_kernels.py ncu): one KL launch, or attention's three (CUDA and Triton alike)."""
    runs = []
    for segment in log.split("==PROF== Connected to process")[1:]:
        specs = SPEC.findall(segment)
        reports = [body for _, body in REPORT.findall(segment)]
        per_spec, i = [], 0
        for spec, backend, threads in specs:
            n = 3 if spec.startswith("at:") else 1
            per_spec.append((spec, backend, threads or None, reports[i:i + n]))
            i += n
        if i == len(reports):  # a run whose launches do not add up (stopped, or filtered otherwise) is left out
            runs.append(per_spec)
    return runs


def spec_of(row: dict) -> str:
    """bench.json row -> the profile spec of the same call."""
    shape = row["shape"]
    if row["kernel"] == "attention":
        return "at:" + ":".join(",".join(map(str, s)) for s in shape) + f":{row['dtype']}"
    cl = shape[-1] == "channels_last"
    dims = ",".join(str(d) for d in (shape[:-1] if cl else shape))
    return f"kl:{dims}:{row['dtype']}" + (":cl" if cl else "")


def durations(runs: list, backend: str) -> dict[str, float]:
    """Nsight's kernel time (us, attention's launches summed) per spec for one backend, at the default streaming
    block size; the last measurement of a spec wins."""
    out = {}
    for run in runs:
        for spec, ran_on, threads, reports in run:
            if ran_on == backend and threads is None:
                out[spec] = sum(metric(r, "Duration") for r in reports)
    return out


def _traffic(row: dict) -> float | None:
    return row.get("traffic_bytes") or (row["fused_gbps"] * row["fused_ms"] * 1e6 if "fused_ms" in row else None)


def _shape(row: dict) -> tuple[str, str]:
    shape = row["shape"]
    shown = " / ".join(str(list(s)) for s in shape) if row["kernel"] == "attention" else (
        str(shape[:-1]) + " channels-last" if shape[-1] == "channels_last" else str(shape))
    return shown, {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(row["dtype"], row["dtype"])


def _pct(traffic: float | None, us: float | None, copy: float) -> str:
    return f"{100 * traffic / (us * 1e-6) / 1e9 / copy:.0f}%" if us and traffic else "-"


def speed_table(bench: dict, runs: list) -> list[str]:
    cuda = durations(runs, "cuda")
    copy = bench["meta"]["copy_gbps"]
    lines = ["| loss | shape | dtype | kernel (us) | % of copy | forward + backward: fused / torch.compile / eager (ms) "
             "| fused, back to back (ms) | op alone (ms) |", "|---|---|---|---|---|---|---|---|"]
    for row in bench["rows"]:
        us = cuda.get(spec_of(row))
        kernel = f"{us:.1f}" + (" (3 launches)" if row["kernel"] == "attention" and us else "") if us else "-"
        pct = _pct(_traffic(row), us, copy)
        times = " / ".join(f"{row[k]:.3f}" if k in row else "-" for k in ("fused_ms", "compile_ms", "eager_ms"))
        shown, dtype = _shape(row)
        piped = f"{row['fused_pipelined_ms']:.3f}" if "fused_pipelined_ms" in row else "-"
        alone = f"{row['fused_kernel_ms']:.3f}" if "fused_kernel_ms" in row else "-"
        lines.append(f"| {'KL' if row['kernel'] == 'kl' else 'attention'} | {shown} | {dtype} | {kernel} | {pct} | "
                     f"{times} | {piped} | {alone} |")
    return lines


def triton_table(bench: dict, runs: list) -> list[str]:
    """The Triton kernels beside the CUDA ones, for the specs Nsight read with ``KDLAB_KERNELS=triton``: kernel time,
    percentage of copy, and the benchmark's forward + backward of each (empty when the run has none)."""
    triton, cuda = durations(runs, "triton"), durations(runs, "cuda")
    if not triton:
        return []
    copy = bench["meta"]["copy_gbps"]
    lines = ["| loss | shape | dtype | Triton kernel (us) | % of copy | CUDA kernel (us) | forward + backward: Triton / CUDA "
             "(ms) |", "|---|---|---|---|---|---|---|"]
    for row in bench["rows"]:
        spec = spec_of(row)
        us, cu = triton.get(spec), cuda.get(spec)
        shown, dtype = _shape(row)
        times = " / ".join(f"{row[k]:.3f}" if k in row else "-" for k in ("triton_ms", "fused_ms"))
        lines.append(f"| {'KL' if row['kernel'] == 'kl' else 'attention'} | {shown} | {dtype} | "
                     f"{f'{us:.1f}' if us else '-'} | {_pct(_traffic(row), us, copy)} | {f'{cu:.1f}' if cu else '-'} | "
                     f"{times} |")
    return lines


def stream_table(runs: list) -> list[str]:
    lines = ["| spec | threads a row | kernel (us) | DRAM throughput (%) | L2 hit rate (%) |", "|---|---|---|---|---|"]
    for run in runs:
        for spec, _backend, threads, reports in run:
            if threads is None or not reports:
                continue
            r = reports[0]
            cells = [metric(r, "Duration"), metric(r, "DRAM Throughput"), metric(r, "L2 Hit Rate")]
            lines.append(f"| {spec} | {threads} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |")
    return lines if len(lines) > 2 else []


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[0] + "\nusage: python tools/kernel_table.py RUN_FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    missing = [n for n in ("bench.json", "profile.log") if not (folder / n).exists()]
    if missing:
        print(f"{folder} lacks {', '.join(missing)} (tools/gpu-check bench profile writes them)", file=sys.stderr)
        return 1
    bench = json.loads((folder / "bench.json").read_text())
    runs = nsight_runs((folder / "profile.log").read_text())
    print(f"{bench['meta']['device']}, copy {bench['meta']['copy_gbps']:,.0f} GB/s\n")
    print("\n".join(speed_table(bench, runs)))
    triton = triton_table(bench, runs)
    if triton:
        print("\nThe Triton kernels (KDLAB_KERNELS=triton):\n")
        print("\n".join(triton))
    streams = stream_table(runs)
    if streams:
        print("\nStreaming rows kernel by block size:\n")
        print("\n".join(streams))
    return 0


if __name__ == "__main__":
    sys.exit(main())
