"""Benchmark of the fused kernels against PyTorch eager and torch.compile (needs a CUDA GPU).

    python -m kdlab.bench [--json FILE] [--quick]

For each kernel, shape and dtype: median milliseconds of forward + backward (CUDA events, after
warm-up), the effective bandwidth of the minimum traffic (read student and teacher, write the
student gradient) in GB/s and as a percentage of the device-to-device copy bandwidth measured in
the same run (``copy_gbps``), and the peak extra memory over the inputs in MiB, for each
implementation (one that cannot take a shape, e.g. more classes than its limit, gets its error
instead of a time):

- ``eager``: the autograd reference (:func:`kdlab.losses.kl_distillation` /
  :func:`kdlab.feature_losses.attention_transfer` with ``KDLAB_KERNELS=reference`` semantics);
- ``compile``: ``torch.compile(dynamic=False)`` of that reference (compiled per shape; forward + backward);
- ``fused``: ``torch.ops.kdlab.*`` (this package's CUDA kernels, or the Triton ones where they stand in);
- ``triton``: the Triton kernels (:mod:`kdlab.kernels.triton_ops`) called directly, when Triton imports.

Each forward + backward is timed from an idle GPU (``*_ms``: host and GPU time add up, what one call costs) and
back to back (``*_pipelined_ms``, ``*_pipelined_pct_of_copy``: 50 calls enqueued with one synchronisation, as in
a training loop, where the host prepares the next call while the GPU runs this one). ``fused_kernel_ms`` is
the fused op alone (one call: loss and gradient, no autograd). The KL shapes include
``[64, 256, 28, 28]`` stored channels-last, which the CUDA kernels read in place (the class axis innermost).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from . import kernels
from .feature_losses import attention_map

KL_SHAPES = [((256, 256, 32, 32), 2.0, False), ((64, 256, 28, 28), 2.0, False), ((64, 256, 28, 28), 2.0, True),
             ((65536, 10), 2.0, False), ((4096, 1024), 2.0, False), ((512, 32768), 2.0, False)]  # True: channels-last
AT_SHAPES = [((128, 64, 32, 32), (128, 256, 32, 32)), ((64, 32, 28, 28), (64, 128, 28, 28))]
DTYPES = (torch.float32, torch.bfloat16)


def kl_eager(s, t, temperature):
    """The reference forward KL in plain PyTorch ops (what eager autograd and torch.compile see)."""
    log_q = torch.log_softmax(s.float() / temperature, 1)
    log_p = torch.log_softmax(t.float() / temperature, 1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean() * temperature ** 2


def at_eager(fs, ft):
    """Attention transfer in plain PyTorch ops, the eager baseline of the benchmark."""
    return (attention_map(fs) - attention_map(ft)).pow(2).sum(1).mean()


def kl_fused(s, t, temperature):
    """The same loss through the fused op (the CUDA kernels where built), its mean taken inside the op."""
    return torch.ops.kdlab.kl_fused(s, t, temperature, False, 1)[0]


def at_fused(fs, ft):
    """Attention transfer through the fused op."""
    return torch.ops.kdlab.attention_fused(fs, ft, 2.0, 1)[0]


class LossAndGradient(torch.autograd.Function):
    """Autograd for a function that returns ``(loss, d loss / d x)`` in one pass, as the fused kernels do:
    the backward multiplies the saved gradient by the upstream one (the Triton kernels called directly)."""

    @staticmethod
    def forward(ctx, fn, x, *args):
        loss, grad = fn(x, *args)
        ctx.save_for_backward(grad)
        ctx.n_args = len(args)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (None, grad * grad_loss, *([None] * ctx.n_args))


def triton_impls() -> dict:
    """``{"kl": fn, "attention": fn}`` timing the Triton kernels through :class:`LossAndGradient`, or ``{}``
    (no Triton, or one too old for them)."""
    try:
        from .kernels import triton_ops
    except ImportError:
        return {}
    if triton_ops.too_old():
        return {}
    return {"kl": lambda s, t, temperature: LossAndGradient.apply(triton_ops.kl_fused, s, t, temperature, False, 1),
            "attention": lambda fs, ft: LossAndGradient.apply(triton_ops.attention_fused, fs, ft, 2.0, 1)}


def forward_backward(fn, x, *args):
    """``fn(x, *args).backward()`` as a function of nothing, ``x.grad`` cleared first (no accumulation)."""
    def run():
        x.grad = None
        fn(x, *args).backward()

    return run


def _time(fn, x, *args, repeats: int = 50, warmup: int = 10) -> tuple[float, float]:
    """Median ms of ``fn(x, *args).backward()`` and the peak memory above the inputs (MiB)."""
    run = forward_backward(fn, x, *args)
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    x.grad = None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), peak


def _time_pipelined(fn, x, *args, repeats: int = 50) -> float:
    """Mean ms per ``fn(x, *args).backward()`` over ``repeats`` enqueued back to back with one synchronisation, as a
    training loop runs them: the host prepares the next call while the GPU works, so this is the larger of the two
    times a call, where :func:`_time` (one call from an idle GPU) adds them up."""
    run = forward_backward(fn, x, *args)
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def _time_alone(op, *args, repeats: int = 50, warmup: int = 10) -> float:
    """Median ms of one call of a fused op (its loss and gradient; no autograd), or NaN if it fails."""
    try:
        for _ in range(warmup):
            op(*args)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            op(*args)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    except Exception:  # the row's fused_error already says why
        torch.cuda.synchronize()
        return float("nan")


def _error_text(err: Exception) -> str:
    """``Type: first line of the message`` (at most 200 characters), for a row that has no time."""
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"


def copy_bandwidth(n_bytes: int = 2 ** 30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written per second), median of ``repeats``
    copies of an ``n_bytes`` buffer: the floor that a memory-bound kernel is measured against."""
    src = torch.empty(n_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return 2 * n_bytes / statistics.median(times) / 1e6


def _row(kernel, shape, dtype, traffic_bytes, impls, x, *args, copy_gbps: float | None = None) -> dict:
    row = {"kernel": kernel, "shape": shape, "dtype": str(dtype).replace("torch.", ""), "traffic_bytes": traffic_bytes}
    for name, fn in impls.items():
        try:
            ms, mem = _time(fn, x, *args)
        except Exception as err:  # e.g. more classes than the kernel takes: record why, go on
            row[f"{name}_error"] = _error_text(err)
            torch.cuda.synchronize()
            continue
        row[f"{name}_ms"], row[f"{name}_gbps"], row[f"{name}_extra_mib"] = ms, traffic_bytes / ms / 1e6, mem
        row[f"{name}_pipelined_ms"] = _time_pipelined(fn, x, *args)
        if copy_gbps:
            for timing in ("", "_pipelined"):
                row[f"{name}{timing}_pct_of_copy"] = 100 * traffic_bytes / row[f"{name}{timing}_ms"] / 1e6 / copy_gbps
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="kdlab fused-kernel benchmark")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--quick", action="store_true", help="the first shape of each kernel only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("kdlab.bench needs a CUDA GPU (none is visible); the measured table is in kdlab/kernels/README.md")
        return 2
    if not kernels.available():
        print(f"the fused kernels are unavailable: {kernels.reason()}")
        return 1
    rows, triton, copy_gbps = [], triton_impls(), copy_bandwidth()
    print(f"device-to-device copy: {copy_gbps:.0f} GB/s")
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "copy_gbps": copy_gbps, "backend": kernels.backend()}

    def done(row: dict) -> None:  # print each row as it is measured and keep the JSON whole after each
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "rows": rows}, f, indent=1)
    for dtype in DTYPES:
        for shape, temperature, channels_last in KL_SHAPES[:1] if args.quick else KL_SHAPES:
            layout = torch.channels_last if channels_last else torch.contiguous_format
            s = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=layout).requires_grad_(True)
            t = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=layout)
            traffic = 3 * s.numel() * s.element_size()
            impls = {"eager": kl_eager, "compile": torch.compile(kl_eager, dynamic=False), "fused": kl_fused}
            impls |= {"triton": triton["kl"]} if triton else {}
            row = _row("kl", list(shape) + (["channels_last"] if channels_last else []), dtype, traffic, impls, s, t,
                       temperature, copy_gbps=copy_gbps)
            row["fused_kernel_ms"] = _time_alone(torch.ops.kdlab.kl_fused, s.detach(), t, temperature, False, 1)
            done(row)
        for s_shape, t_shape in AT_SHAPES[:1] if args.quick else AT_SHAPES:
            fs = torch.randn(s_shape, device="cuda").to(dtype).requires_grad_(True)
            ft = torch.randn(t_shape, device="cuda").to(dtype)
            traffic = (2 * fs.numel() + ft.numel()) * fs.element_size()
            impls = {"eager": at_eager, "compile": torch.compile(at_eager, dynamic=False), "fused": at_fused}
            impls |= {"triton": triton["attention"]} if triton else {}
            row = _row("attention", [list(s_shape), list(t_shape)], dtype, traffic, impls, fs, ft, copy_gbps=copy_gbps)
            row["fused_kernel_ms"] = _time_alone(torch.ops.kdlab.attention_fused, fs.detach(), ft, 2.0, 1)
            done(row)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"{'kernel':<10}{'shape':<34}{'dtype':<10}{'eager ms':>9}{'compile ms':>11}{'fused ms':>9}"
          f"{'fused GB/s':>11}{'x eager':>8}{'x compile':>10}{'extra MiB e/c/f':>20}{'triton ms':>10}{'of copy':>10}"
          f"{'alone ms':>10}{'piped ms':>10}{'of copy':>9}")
    nan = float("nan")
    for r in rows:
        g = lambda key: r.get(key, nan)  # noqa: E731  (nan where an implementation could not take the shape)
        print(f"{r['kernel']:<10}{str(r['shape']):<34}{r['dtype']:<10}{g('eager_ms'):>9.3f}{g('compile_ms'):>11.3f}"
              f"{g('fused_ms'):>9.3f}{g('fused_gbps'):>11.0f}{g('eager_ms') / g('fused_ms'):>8.1f}"
              f"{g('compile_ms') / g('fused_ms'):>10.1f}"
              f"{g('eager_extra_mib'):>8.0f}/{g('compile_extra_mib'):.0f}/{g('fused_extra_mib'):.0f}"
              f"{g('triton_ms'):>10.3f}{g('fused_pct_of_copy'):>9.0f}%{g('fused_kernel_ms'):>10.3f}"
              f"{g('fused_pipelined_ms'):>10.3f}{g('fused_pipelined_pct_of_copy'):>8.0f}%")
        for key in (k for k in r if k.endswith("_error")):
            print(f"    {key[:-6]}: {r[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
