"""The Triton kernels (kdlab.kernels.triton_ops) against the float64 reference, on the CPU under Triton's
interpreter (in a subprocess: TRITON_INTERPRET must be set before Triton is imported), and the choice of
backend."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab import kernels
from kdlab.kernels import build

pytest.importorskip("triton")

CHECK = r"""
import torch
from kdlab.kernels import reference, triton_ops
g = torch.Generator().manual_seed(0)
checked = 0
for shape in [(3, 10), (2, 7, 3, 5), (4, 300)]:  # [N, K], [N, K, H, W], K not a power of two
    s, t = torch.randn(*shape, generator=g) * 3, torch.randn(*shape, generator=g) * 3
    s[0, 0] = float("-inf")  # a -inf student logit: forward KL +inf there, reverse finite (0 * inf -> 0)
    for dtype in (torch.float32, torch.float16):
        for reverse in (False, True):
            for reduction in (0, 1, 2):
                loss, grad = triton_ops.kl_fused(s.to(dtype), t.to(dtype), 2.0, reverse, reduction)
                ref = reference.kl_fused(s.to(dtype).double(), t.to(dtype).double(), 2.0, reverse, reduction)
                assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.shape == s.shape
                tol = 1e-5 if dtype == torch.float32 else 2e-3
                torch.testing.assert_close(loss.double(), ref[0], rtol=tol, atol=tol)
                torch.testing.assert_close(grad.double(), ref[1], rtol=tol, atol=tol)
                checked += 1
s, t = (torch.randn(2, 7, 3, 5, generator=g).contiguous(memory_format=torch.channels_last) for _ in range(2))
loss, grad = triton_ops.kl_fused(s, t, 2.0, False, 1)  # channels-last in, channels-last gradient out, like CUDA
assert grad.stride() == s.stride()
torch.testing.assert_close(grad.double(), reference.kl_fused(s.double(), t.double(), 2.0, False, 1)[1], rtol=1e-5, atol=1e-7)
w = torch.tensor(0.3)  # weights: 0.5 * 0.3 on loss and gradient, the tensor read in the kernel
loss, grad = triton_ops.kl_fused(s, t, 2.0, True, 2, 0.5, w)
ref = reference.kl_fused(s.double(), t.double(), 2.0, True, 2)
torch.testing.assert_close(loss.double(), 0.15 * ref[0], rtol=1e-5, atol=1e-6)
torch.testing.assert_close(grad.double(), 0.15 * ref[1], rtol=1e-5, atol=1e-7)
before = grad.clone()
triton_ops.apply_upstream_(grad, torch.tensor(1.0))  # the backward's step: untouched at 1
assert torch.equal(grad, before)
triton_ops.apply_upstream_(grad, torch.tensor(-2.0))
assert torch.equal(grad, -2.0 * before)
fs, ft = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 6, 3, 5, generator=g)
loss, grad = triton_ops.attention_fused(fs, ft, 2.0, 1, -1.0, w)
ref = reference.attention_fused(fs.double(), ft.double(), 2.0, 1)
torch.testing.assert_close(loss.double(), -0.3 * ref[0], rtol=1e-5, atol=1e-6)
torch.testing.assert_close(grad.double(), -0.3 * ref[1], rtol=1e-5, atol=1e-7)
fs[0, 0, 0, 0] = 0  # |F|^(p-1) sign(F) at 0
for p in (1.0, 2.0, 3.0):
    for reduction in (0, 1, 2):
        loss, grad = triton_ops.attention_fused(fs, ft, p, reduction)
        ref = reference.attention_fused(fs.double(), ft.double(), p, reduction)
        torch.testing.assert_close(loss.double(), ref[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad.double(), ref[1], rtol=1e-5, atol=1e-7)
        checked += 1
print("checked", checked)
"""


def test_triton_kernels_match_the_float64_reference_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", CHECK], cwd=Path(__file__).parent.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["checked", str(3 * 2 * 2 * 3 + 3 * 3)]


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
