"""The Triton kernels (kdlab.kernels.triton_ops) against the float64 reference, on the CPU under Triton's
interpreter (in a subprocess: TRITON_INTERPRET must be set before Triton is imported), and the choice of
backend."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlab import kernels
from kdlab.kernels import build

pytest.importorskip("triton")

CHECK = r"""
import torch
from kdlab.kernels import reference, triton_ops
g = torch.Generator().manual_seed(0)
inf = float("inf")
checked = 0


def close(got, want, tol):
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol, equal_nan=True)


# TILE 4096: every shape below in one pass (registers), checked in both dtypes and all reductions; 64 and 8:
# logits streamed in chunks (rows: 64 or 8 classes a chunk; positions innermost: 16 positions by 4 classes, or
# by 1), in float32 without a reduction (the interpreter is slow with many chunks)
# [N, K], [N, K, H, W] with P = 15 (one partial tile of 16 positions), K not a power of two, 70 rows (partial
# row tiles), [N, K, L] with P = 40 (three tiles)
SHAPES = {4096: [(3, 10), (2, 7, 3, 5), (4, 300), (70, 3), (2, 33, 40)], 64: [(2, 7, 3, 5), (4, 300), (2, 33, 40)],
          8: [(3, 10), (2, 7, 3, 5)]}
for tile in (4096, 64, 8):
    triton_ops.TILE = tile
    full = tile == 4096
    for shape in SHAPES[tile]:
        s, t = torch.randn(*shape, generator=g) * 3, torch.randn(*shape, generator=g) * 3
        s[0, 0] = -inf  # a -inf student logit: forward KL +inf there, reverse finite (0 * inf -> 0)
        t[-1, 1] = -inf  # a -inf teacher logit: reverse KL +inf there, forward finite
        for dtype in (torch.float32, torch.float16) if full else (torch.float32,):
            for reverse in (False, True):
                for reduction in (0, 1, 2) if full else (0,):
                    loss, grad = triton_ops.kl_fused(s.to(dtype), t.to(dtype), 0.7, reverse, reduction)
                    ref = reference.kl_fused(s.to(dtype).double(), t.to(dtype).double(), 0.7, reverse, reduction)
                    assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.shape == s.shape
                    tol = 1e-5 if dtype == torch.float32 else 2e-3
                    close(loss, ref[0], tol)
                    close(grad, ref[1], tol)
                    checked += 1
    # logits around +-1e4: differences are taken before dividing by T, so nothing is lost to the scaling
    for shape in [(8, 400), (2, 300, 3)] if tile > 8 else []:
        s, t = torch.randn(*shape, generator=g) + 1e4, torch.randn(*shape, generator=g) - 1e4
        for reverse in (False, True):
            loss, grad = triton_ops.kl_fused(s, t, 0.7, reverse)
            ref = reference.kl_fused(s.double(), t.double(), 0.7, reverse)
            close(loss, ref[0], 1e-5)
            close(grad, ref[1], 1e-5)
            checked += 1
    # masked classes against the float32 reference (no NaN that depends on how classes fall into chunks):
    # a teacher weight exp(-200) that underflows opposite a -inf student logit, in the first chunk while the
    # maximum rises later; a whole row of the weighting distribution masked (KL 0); a student row all -inf
    # for two chunks and more while the teacher's weight is there (+inf), and the teacher's in reverse
    for shape in [(2, 20), (2, 20, 3)]:
        s, t = torch.zeros(shape), torch.zeros(shape)
        t[:, 0:4] = -200.0
        s[:, 1] = -inf
        t[:, 10] = 5.0
        masked = torch.randn(shape, generator=g)
        masked[1] = -inf
        early = torch.zeros(shape)
        early[:, :17] = -inf
        for a, b, reverse in ((s, t, False), (t, s, True), (masked, torch.randn(shape, generator=g), True),
                              (torch.randn(shape, generator=g), masked, False), (early, s, False),
                              (torch.randn(shape, generator=g), early, True)):
            loss, grad = triton_ops.kl_fused(a, b, 1.0, reverse)
            ref = reference.kl_fused(a, b, 1.0, reverse)
            for same in (torch.isnan, torch.isposinf):  # +inf where the reference has it, never NaN for it
                assert torch.equal(same(loss), same(ref[0])), (tile, shape, reverse, loss, ref[0])
            close(loss[torch.isfinite(ref[0])], ref[0][torch.isfinite(ref[0])], 1e-5)
            close(grad[torch.isfinite(ref[1])], ref[1][torch.isfinite(ref[1])], 1e-5)
            checked += 1
    s, t = (torch.randn(2, 7, 3, 5, generator=g).contiguous(memory_format=torch.channels_last) for _ in range(2))
    loss, grad = triton_ops.kl_fused(s, t, 2.0, False, 1)  # channels-last in, channels-last gradient out, like CUDA
    assert grad.stride() == s.stride()
    close(grad, reference.kl_fused(s.double(), t.double(), 2.0, False, 1)[1], 1e-5)
    w = torch.tensor(0.3)  # weights: 0.5 * 0.3 on loss and gradient, the tensor read in the kernel; mean and sum
    for shape in [(3, 20), (2, 20, 3)]:  # streamed at TILE 8
        s, t = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        for reverse, reduction in ((True, 2), (False, 1)):
            loss, grad = triton_ops.kl_fused(s, t, 2.0, reverse, reduction, 0.5, w)
            ref = reference.kl_fused(s.double(), t.double(), 2.0, reverse, reduction)
            close(loss, 0.15 * ref[0], 1e-5)
            close(grad, 0.15 * ref[1], 1e-5)
            checked += 1
x64, x32 = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4)
for op, s_, t_, reduction, why in ((triton_ops.kl_fused, x64, x64, 0, "float64"),  # refused as by the CUDA op
                                   (triton_ops.kl_fused, x32, x32, 3, "reduction"),
                                   (triton_ops.kl_fused, x32, x32.half(), 0, "dtype"),
                                   (triton_ops.attention_fused, x32, x32.bfloat16(), 0, "dtype")):
    try:
        op(s_, t_, 1.0, False, reduction) if op is triton_ops.kl_fused else op(s_, t_, 2.0, reduction)
        raise AssertionError("accepted")
    except ValueError as e:
        assert why in str(e), e
before = grad.clone()
triton_ops.apply_upstream_(grad, torch.tensor(1.0))  # the backward's step: untouched at 1
assert torch.equal(grad, before)
triton_ops.apply_upstream_(grad, torch.tensor(-2.0))
assert torch.equal(grad, -2.0 * before)
fs, ft = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 6, 3, 5, generator=g)
loss, grad = triton_ops.attention_fused(fs, ft, 2.0, 1, -1.0, w)
ref = reference.attention_fused(fs.double(), ft.double(), 2.0, 1)
close(loss, -0.3 * ref[0], 1e-6)
close(grad, -0.3 * ref[1], 1e-6)
# one tile of positions and channels; 81 positions and 40 / 70 channels (partial tiles of 64 and 32);
# 40 x 40 positions (the stats kernel's two chunks of 1,024)
# a sample of all-zero features (the norms' eps: loss and gradient 0, not NaN); p = 0.5 and 0, where |F|^(p-1) at
# F = 0 is infinite (the reference's NaN there, as powf gives it to the CUDA kernel)
for cs, ct, hw in ((4, 6, (3, 5)), (40, 70, (9, 9)), (3, 5, (40, 40))):
    fs, ft = torch.randn(3, cs, *hw, generator=g), torch.randn(3, ct, *hw, generator=g)
    fs[0, 0, 0, 0] = 0  # |F|^(p-1) sign(F) at 0
    fs[2], ft[2] = 0, 0
    for p in (0.0, 0.5, 1.0, 2.0, 3.0):
        for reduction in (0, 1, 2) if p >= 1 else (0,):
            loss, grad = triton_ops.attention_fused(fs, ft, p, reduction)
            ref = reference.attention_fused(fs.double(), ft.double(), p, reduction)
            torch.testing.assert_close(loss.double(), ref[0], rtol=1e-5, atol=1e-6, equal_nan=True)
            torch.testing.assert_close(grad.double(), ref[1], rtol=1e-5, atol=1e-7, equal_nan=True)
            checked += 1
print("checked", checked)
"""


def test_triton_kernels_match_the_float64_reference_in_the_interpreter():
    from kdlab.kernels import triton_ops
    if problem := triton_ops.interpreter_problem():
        pytest.skip(problem)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", CHECK], cwd=Path(__file__).parent.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    kl = 5 * 2 * 2 * 3 + 3 * 2 + 2 * 2 + 2 * (2 * 2) + 3 * (2 * 6) + 3 * (2 * 2)  # tables, logits at 1e4, masked, weights
    assert done.stdout.split() == ["checked", str(kl + 3 * (3 * 3 + 2))]


def test_the_interpreter_problem_is_named_for_old_triton_and_for_triton_3_6_with_numpy_2_4(monkeypatch):
    import numpy
    import triton
    from kdlab.kernels import triton_ops
    for triton_version, numpy_version, expected in [("3.6.0", "2.4.6", "numpy<2.4"), ("3.6.0", "2.3.5", None),
                                                    ("3.7.0", "2.4.6", None), ("3.10.1", "2.5.0", None),
                                                    ("3.6.0+git1a2b", "2.4.0rc1", "numpy<2.4"),
                                                    ("3.0.0", "1.26.4", "older than 3.3"), ("3.3.1", "1.26.4", None)]:
        monkeypatch.setattr(triton, "__version__", triton_version)
        monkeypatch.setattr(numpy, "__version__", numpy_version)
        problem = triton_ops.interpreter_problem()
        assert (problem is None) == (expected is None)
        if expected:
            assert expected in problem and triton_version in problem


def test_a_triton_older_than_the_checked_ones_is_not_used(monkeypatch):
    """The Triton backend needs a CUDA device and Triton >= 3.3 (the oldest the kernels compile with, checked);
    an older one leaves the formulas, with the reason kernels.reason() gives, and the benchmark's Triton column."""
    import triton
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("KDLAB_KERNELS", "auto")
    old = "Triton 3.2.0 is older than 3.3, the oldest kdlab's Triton kernels are checked with (a newer PyTorch brings a " \
          "newer Triton)"
    from kdlab import bench
    from kdlab.kernels import triton_ops
    for version, why in [("3.2.0", old), ("3.3.1", None), ("3.8.0", None)]:
        monkeypatch.setattr(triton, "__version__", version)
        assert build.triton_possible() == why and triton_ops.too_old() == why
        assert set(bench.triton_impls()) == (set() if why else {"kl", "attention"})  # the benchmark leaves it out


@pytest.fixture
def fresh_state(monkeypatch):
    for key, value in {"checked": False, "available": False, "reason": "not checked yet", "backend": "reference"}.items():
        monkeypatch.setitem(kernels._state, key, value)
    monkeypatch.delenv("KDLAB_KERNELS", raising=False)
    registered = []
    monkeypatch.setattr(kernels, "_register_triton", lambda: registered.append("triton"))
    monkeypatch.setattr(build, "compile_and_load", lambda: registered.append("cuda"))
    return registered


@pytest.mark.parametrize("missing, triton_why, backend", [
    (None, None, "cuda"),  # everything there: the compiled kernels
    ("nvcc (the CUDA compiler) was not found on PATH", None, "triton"),  # pip install torch: Triton, no nvcc
    ("ninja was not found (pip install ninja)", None, "triton"),
    ("nvcc (the CUDA compiler) was not found on PATH", "Triton is not installed", "reference"),
    ("no CUDA device is visible", None, "reference"),  # a CPU: neither
])
def test_the_backend_is_cuda_then_triton_then_the_reference(fresh_state, monkeypatch, missing, triton_why, backend):
    monkeypatch.setattr(build, "missing_requirement", lambda: missing)
    monkeypatch.setattr(build, "triton_possible", lambda: triton_why)
    assert kernels.backend() == backend
    assert kernels.available() == (backend != "reference")
    assert fresh_state == ([] if backend == "reference" else [backend])
    if backend == "reference":
        assert missing in kernels.reason() and (triton_why is None or triton_why in kernels.reason())


def test_kdlab_kernels_triton_forces_triton_or_fails(fresh_state, monkeypatch):
    monkeypatch.setenv("KDLAB_KERNELS", "triton")
    monkeypatch.setattr(build, "missing_requirement", lambda: None)  # the CUDA build would work
    monkeypatch.setattr(build, "triton_possible", lambda: None)
    assert kernels.backend() == "triton" and fresh_state == ["triton"]
    monkeypatch.setitem(kernels._state, "checked", False)
    monkeypatch.setattr(build, "triton_possible", lambda: "no CUDA device is visible")
    with pytest.raises(RuntimeError, match="KDLAB_KERNELS=triton but the fused kernels are unavailable"):
        kernels.available()


def test_the_benchmarks_autograd_wrapper_backpropagates_the_saved_gradient():
    """kdlab.bench times the Triton kernels through LossAndGradient; with the reference as the function its
    gradient must be autograd's of the formula, scaled by the upstream gradient."""
    import torch

    from kdlab import losses
    from kdlab.bench import LossAndGradient
    from kdlab.kernels import reference

    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    (3 * LossAndGradient.apply(reference.kl_fused, s, t, 2.0, False, 1)).backward()
    mine = s.grad.clone()
    s.grad = None
    (3 * losses.kl_distillation(s, t, 2.0, "forward", "mean")).backward()
    torch.testing.assert_close(mine, s.grad, rtol=1e-10, atol=1e-12)


def test_triton_kernels_compile_for_sm90_with_wide_loads_in_flight_and_no_spills():
    """Triton compiles the kernels for an H100 here, without a GPU (tools/triton_sass.py, the README's Triton
    table): at the benchmark's reference shape the KL program issues all its loads (16 bytes each, 8 in fp32) before
    using any (before the tiles: 4-byte loads 4 KB apart, 4 in flight); the streaming KL loop and the attention
    kernels' channel loops are software-pipelined (asynchronous copies of the next chunks while one is used: a plain
    loop reused one register set, one load in flight); no kernel spills."""
    pytest.importorskip("triton.compiler")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import triton_sass
    from kernel_sass import load_widths, loads_in_flight

    cases = [triton_sass.KL_CASES[0], triton_sass.KL_CASES[2], triton_sass.KL_CASES[5]]
    try:  # the tool drives Triton's compiler directly (ASTSource, GPUTarget), as Triton 3.8 spells them
        kernels_ = triton_sass.kl_plans(cases, ("fp32",)) + triton_sass.attention_plans(("fp32",))
        bf16 = triton_sass._read(triton_sass.kl_plans(cases[:1], ("bf16",))[0][3])
    except (ImportError, AttributeError, TypeError, KeyError) as e:
        import triton

        pytest.skip(f"Triton {triton.__version__}'s compiler interface differs from tools/triton_sass.py's: {e!r}")
    read = {label: triton_sass._read(kernel) for label, _, _, kernel in kernels_}
    assert all(r["spill_bytes"] == 0 for r in read.values()), {k: r["spill_bytes"] for k, r in read.items()}
    reference_shape = read["KL [256, 256, 32, 32]"]["sass"]
    assert load_widths(reference_shape) == "16 B" and loads_in_flight(reference_shape) >= 8
    # bf16: all 4 loads (8 values each) in flight, and at most 128 registers: two programs of 8 warps an SM
    assert loads_in_flight(bf16["sass"]) >= 4 and bf16["registers"] <= 128 and bf16["spill_bytes"] == 0
    assert load_widths(read["KL [64, 256, 28, 28] channels-last"]["sass"]) == "16 B"  # read in place, rows
    for streamed in ("KL [512, 32768]", "attention maps", "attention gradient"):
        assert triton_sass.async_copies(read[streamed]["sass"]) > 0, streamed
