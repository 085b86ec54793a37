"""Where the fused KL op's time goes on a GPU (tools/gpu-check profile runs it).

    python tools/profile_kernels.py host            # torch.profiler: CPU-side cost of one forward + backward
    python tools/profile_kernels.py ncu [SPEC...]    # one call of the op per SPEC (default: every benchmark shape)
    python tools/profile_kernels.py autograd [--extension]   # CPU only: the autograd wrapper's host cost

``host``: for a small shape (``[4096, 1024]`` fp32, where the benchmark's forward + backward time is far above the
kernel's), the host time per forward + backward of the fused op, of the eager formula and of the Triton path
(200 calls enqueued, one synchronisation), and the profiler's table of the fused path's CPU time by operator.
``autograd``: on the CPU (no GPU needed), the host time of a forward + backward through ``kl_fused`` on a
``[4, 8]`` float32 tensor against the op alone under ``no_grad`` (the reference's arithmetic), one thread,
best of 5 rounds of 3,000 calls: with ``--extension`` the CUDA extension is built (nvcc, ``TORCH_CUDA_ARCH_LIST``)
and loaded first, so its C++ autograd (``autograd.cpp``) runs instead of the Python registration.
``ncu``: e.g. ``ncu --clock-control none --section SpeedOfLight -k regex:kl_ python tools/profile_kernels.py ncu
kl:256,256,32,32:bfloat16`` (the specs: :func:`ncu`).
"""
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kdlab import bench, kernels  # noqa: E402
import kernel_table  # noqa: E402  (tools/, this script's folder)


def host() -> None:
    s = torch.randn(4096, 1024, device="cuda", requires_grad=True)
    t = torch.randn(4096, 1024, device="cuda")
    triton = bench.triton_impls()
    impls = {"fused": bench.kl_fused, "eager": bench.kl_eager} | ({"triton": triton["kl"]} if triton else {})
    for name, fn in impls.items():
        run = bench.forward_backward(fn, s, t, 2.0)
        for _ in range(20):
            run()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(200):
            run()
        host_us = (time.perf_counter() - start) / 200 * 1e6
        torch.cuda.synchronize()
        total_us = (time.perf_counter() - start) / 200 * 1e6
        print(f"{name:<7} host {host_us:7.1f} us per forward + backward enqueued, {total_us:7.1f} us with the GPU's work")
    schedule = torch.profiler.schedule(wait=0, warmup=10, active=50)  # the profiler's own start-up is not counted
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
                                schedule=schedule) as prof:
        run = bench.forward_backward(bench.kl_fused, s, t, 2.0)
        for _ in range(60):
            run()
            prof.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


def _per_call_us(fn, calls: int = 3000, rounds: int = 5) -> float:
    """Best over ``rounds`` of the mean host time of ``fn()`` over ``calls`` calls, in microseconds."""
    for _ in range(200):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def autograd_host(extension: bool) -> None:
    torch.set_num_threads(1)
    if extension:
        kernels.build.compile_and_load()
    s, t = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)

    def op_alone():
        with torch.no_grad():
            bench.kl_fused(s, t, 2.0)

    node = type(bench.kl_fused(s, t, 2.0).grad_fn).__name__
    print(f"autograd node: {node} ({'C++, autograd.cpp' if 'Cpp' in node else 'Python, schema.py'})")
    print(f"forward + backward {_per_call_us(bench.forward_backward(bench.kl_fused, s, t, 2.0)):6.1f} us; "
          f"op alone under no_grad {_per_call_us(op_alone):6.1f} us")


def bench_specs() -> list[str]:
    """The spec of every shape ``python -m kdlab.bench`` times (its KL_SHAPES, AT_SHAPES and DTYPES), in the format
    of tools/kernel_table.py, which matches them back to bench.json's rows."""
    rows = []
    for dtype in (str(d).replace("torch.", "") for d in bench.DTYPES):
        rows += [{"kernel": "kl", "shape": list(shape) + (["channels_last"] if cl else []), "dtype": dtype}
                 for shape, _, cl in bench.KL_SHAPES]
        rows += [{"kernel": "attention", "shape": [list(s), list(t)], "dtype": dtype} for s, t in bench.AT_SHAPES]
    return [kernel_table.spec_of(row) for row in rows]


def ncu(specs: list[str]) -> None:
    """One call of the op per spec: ``kl:256,256,32,32:float32``, ``kl:64,256,28,28:bfloat16:cl`` (channels-last),
    ``at:128,64,32,32:128,256,32,32:float32`` (attention transfer, student then teacher shape)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    for spec in specs:
        kind, *parts = spec.split(":")
        if kind == "kl":
            size, dtype = tuple(int(n) for n in parts[0].split(",")), getattr(torch, parts[1])
            layout = torch.channels_last if parts[2:] == ["cl"] else torch.contiguous_format
            s, t = (torch.randn(size, device="cuda", generator=g).to(dtype).contiguous(memory_format=layout) for _ in range(2))
            torch.ops.kdlab.kl_fused(s, t, 2.0, False, 1)
        else:
            fs = torch.randn(tuple(int(n) for n in parts[0].split(",")), device="cuda", generator=g).to(getattr(torch, parts[2]))
            ft = torch.randn(tuple(int(n) for n in parts[1].split(",")), device="cuda", generator=g).to(getattr(torch, parts[2]))
            torch.ops.kdlab.attention_fused(fs, ft, 2.0, 1)
        torch.cuda.synchronize()
        threads = os.environ.get("KDLAB_KL_STREAM_THREADS")  # tools/kernel_table.py reads it back from the log
        print(f"{spec}: backend {kernels.backend()}" + (f", KDLAB_KL_STREAM_THREADS={threads}" if threads else ""), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "autograd":
        autograd_host("--extension" in sys.argv)
        raise SystemExit
    assert kernels.available(), kernels.reason()
    host() if sys.argv[1] == "host" else ncu(sys.argv[2:] or bench_specs())
