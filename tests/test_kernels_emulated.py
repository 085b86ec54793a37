"""The CUDA kernels' own source (kl_kernel.cuh, attention_kernel.cuh) run on the CPU under the SIMT
emulator (kdlab/kernels/emulator), against independent float64 formulas: values, gradients,
reductions, launch configurations with partial tiles and every tile size, extreme logits, and
bitwise-identical results under three thread schedules (a race would make them differ). The
emulator's own checks are tested on planted bugs (tests/fixtures/simt_bugs.cpp) so they can fail."""
import ctypes
from pathlib import Path

import pytest
import torch

from kdlab import kernels
from kdlab.kernels import emulate
from refs64 import at64, kl64, value_and_grad64

pytestmark = pytest.mark.skipif(emulate.compiler() is None, reason="needs a C++ compiler (g++) for the emulator")

ORDERS = ("ascending", "descending", "shuffled")


def close(actual, expected, rtol=2e-5, atol=2e-6):
    """float32 kernel vs float64 formula: relative to each tensor's scale."""
    scale = expected.abs().max().item()
    return torch.allclose(actual.double(), expected, rtol=rtol, atol=atol * max(scale, 1.0))


# shapes: rows (N, K) with N not a multiple of the 32-position tile, K = 2 and odd K; spatial
# logits with partial tiles; K large enough for tiles of 8, 2 and 1 positions (K = 12,287 is the limit)
KL_SHAPES = [(37, 2), (6, 10), (64, 33), (3, 7, 5, 7), (2, 257, 4), (2, 1024, 3), (1, 5000, 3), (2, 12287)]


@pytest.mark.parametrize("shape", KL_SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_emulated_kl_kernel_matches_float64(shape, reverse):
    g = torch.Generator().manual_seed(sum(shape))
    s, t = 3 * torch.randn(shape, generator=g), 3 * torch.randn(shape, generator=g)
    temperature = 2.5 if reverse else 1.0
    loss, grad = emulate.kl_fused(s, t, temperature, reverse)
    ref, ref_grad = value_and_grad64(kl64, s, t, temperature, reverse)
    assert loss.shape == ref.shape and grad.shape == s.shape
    assert close(loss, ref) and close(grad, ref_grad)


@pytest.mark.parametrize("reduction", [1, 2])
def test_emulated_kl_kernel_reduces_and_scales_the_gradient(reduction):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 9, 3, 5, generator=g), torch.randn(4, 9, 3, 5, generator=g)
    loss, grad = emulate.kl_fused(s, t, 2.0, True, reduction)
    per_position, ref_grad = value_and_grad64(kl64, s, t, 2.0, True)
    positions = per_position.numel()
    expected = per_position.mean() if reduction == 1 else per_position.sum()
    assert loss.dim() == 0 and close(loss, expected)
    assert close(grad, ref_grad / positions if reduction == 1 else ref_grad)


def test_emulated_kl_kernel_is_stable_for_extreme_logits():
    s = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]])
    t = torch.tensor([[-1000.0, 1000.0, 0.0], [-1000.0, 1000.0, 0.0]])
    for reverse in (False, True):
        loss, grad = emulate.kl_fused(s, t, 1.0, reverse)
        # row 0: q = (1, 0, 0), p = (0, 1, 0): KL = 2000 both ways; row 1: identical rows, KL = 0
        assert torch.allclose(loss, torch.tensor([2000.0, 0.0]), atol=1e-3)
        expected = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]) if not reverse else torch.zeros(2, 3)
        if reverse:  # T q (log q - log p - KL): only the student's own class has q > 0, and there the bracket is 0
            expected[0, 0] = 0.0
        assert torch.isfinite(grad).all() and torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(37, 2), (3, 7, 5, 7), (2, 1024, 3)])
def test_emulated_kl_kernel_is_race_free_under_three_schedules(shape):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    runs = [emulate.kl_fused(s, t, 2.0, True, order=order, seed=11) for order in ORDERS]
    for loss, grad in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(grad, runs[0][1])


# (N, C_S, C_T, H, W): one warp; a partial last warp; H W > 1024 so each thread loops over positions
AT_SHAPES = [(2, 3, 5, 4, 8), (3, 5, 11, 5, 7), (2, 3, 4, 33, 34)]


@pytest.mark.parametrize("shape", AT_SHAPES)
@pytest.mark.parametrize("p", [2.0, 3.0])
def test_emulated_attention_kernel_matches_float64(shape, p):
    n, cs, ct, h, w = shape
    g = torch.Generator().manual_seed(n * h * w)
    fs, ft = torch.randn(n, cs, h, w, generator=g), torch.randn(n, ct, h, w, generator=g)
    loss, grad = emulate.attention_fused(fs, ft, p)
    ref, ref_grad = value_and_grad64(at64, fs, ft, p)
    assert close(loss, ref) and close(grad, ref_grad)
    mean, mean_grad = emulate.attention_fused(fs, ft, p, reduction=1)
    assert close(mean, ref.mean()) and close(mean_grad, ref_grad / n)


def test_emulated_attention_kernel_is_race_free_under_three_schedules():
    g = torch.Generator().manual_seed(5)
    fs, ft = torch.randn(2, 3, 33, 34, generator=g), torch.randn(2, 6, 33, 34, generator=g)
    runs = [emulate.attention_fused(fs, ft, 3.0, order=order, seed=2) for order in ORDERS]
    for loss, grad in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(grad, runs[0][1])


def test_emulated_attention_kernel_with_all_zero_student_stays_finite():
    ft = torch.randn(2, 4, 5, 6)
    loss, grad = emulate.attention_fused(torch.zeros(2, 3, 5, 6), ft)
    # a_S = 0, so u = 0 and d = -v: the loss is ||v||^2 = 1 per sample, and d |F|^2 / d F = 0 at F = 0
    assert torch.allclose(loss, torch.ones(2), atol=1e-6) and torch.equal(grad, torch.zeros_like(grad))


def test_python_limits_match_the_kernels():
    """kdlab.kernels routes shapes beyond these limits to the reference; the kernel must accept them."""
    s = torch.randn(1, kernels.MAX_CLASSES)
    loss, _ = emulate.kl_fused(s, s.flip(1), 1.0, False)
    assert loss.item() > 0
    fs = torch.randn(1, 1, 64, kernels.MAX_POSITIONS // 64)
    loss, _ = emulate.attention_fused(fs, fs.flip(3))
    assert loss.item() > 0


@pytest.fixture(scope="module")
def planted():
    lib = emulate.build([Path(__file__).parent / "fixtures" / "simt_bugs.cpp"], name="kdlab_simt_bugs")

    def run(which, order="ascending"):
        out, error = torch.empty(64), ctypes.create_string_buffer(512)
        code = lib.simt_bug(which, emulate.ORDERS[order], ctypes.c_void_p(out.data_ptr()), error, len(error))
        return out, error.value.decode() if code else ""
    return run


def test_emulator_runs_a_correct_block_reduction_identically_in_every_order(planted):
    for order in ORDERS:
        out, error = planted(0, order)
        assert error == "" and torch.equal(out, torch.full((64,), 2016.0))  # 0 + 1 + ... + 63


def test_emulator_exposes_a_missing_barrier_as_schedule_dependent_results(planted):
    ascending, _ = planted(1, "ascending")
    descending, _ = planted(1, "descending")
    # ascending: each thread runs before its neighbour wrote (NaN), except the last, which reads
    # thread 0's value; descending: the other way round
    assert ascending[:63].isnan().all() and ascending[63].item() == 0.0
    assert torch.equal(descending[:63], torch.arange(1, 64).float()) and descending[63].isnan()


@pytest.mark.parametrize("which, message", [
    (2, "threads wait at different __syncthreads: simt_bugs.cpp:"),
    (3, "__shfl_xor_sync at common.cuh:"),
    (4, "out-of-bounds access to dynamic shared memory (256 bytes): byte offset 256, by block 0, thread 63"),
    (5, "out-of-bounds access to out (256 bytes): byte offset 256"),
])
def test_emulator_reports_planted_bugs(planted, which, message):
    _, error = planted(which)
    assert message in error
    if which == 3:
        assert "lane 5 of its mask has exited" in error


def test_emulator_poisons_unwritten_shared_memory(planted):
    out, error = planted(6)
    assert error == "" and out.isnan().all()


def test_emulator_rejects_non_float32_input():
    with pytest.raises(TypeError, match="float32 CPU tensors"):
        emulate.kl_fused(torch.randn(2, 3).double(), torch.randn(2, 3).double(), 1.0, False)
