"""The CUDA kernels' own source (kl_kernel.cuh, attention_kernel.cuh) run on the CPU under the SIMT
emulator (tools/simt/emulate.py), against independent float64 formulas: values, gradients,
reductions, launch configurations with partial tiles and every tile size, extreme logits, and
bitwise-identical results under three thread schedules (a race would make them differ). The
emulator's own checks are tested on planted bugs (tests/fixtures/simt_bugs.cpp) so they can fail."""
import ctypes
import math
import sys
from pathlib import Path

import pytest
import torch

import kdlab as kd
from kdlab import kernels
from kdlab.kernels import reference
from refs64 import at64, kl64, value_and_grad64

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "simt"))  # developer tooling, outside the package
import emulate  # noqa: E402

pytestmark = pytest.mark.skipif(emulate.compiler() is None, reason="needs a C++ compiler (g++) for the emulator")

ORDERS = ("ascending", "descending", "shuffled")


def close(actual, expected, rtol=2e-5, atol=2e-6):
    """float32 kernel vs float64 formula: relative to each tensor's scale."""
    scale = expected.abs().max().item()
    return torch.allclose(actual.double(), expected, rtol=rtol, atol=atol * max(scale, 1.0))


# every path: 4 lanes per position (K <= 4, tiles of 128), 16 lanes (K <= 16), a warp with 8 logits
# per lane in registers (K <= 256), a warp looping over shared memory (K > 256), at and around each
# boundary; rows (N, K) and spatial logits with partial tiles; K large enough for tiles of 8, 2 and 1
# positions (K = 12,287 is the limit)
KL_SHAPES = [(37, 2), (300, 3), (2, 4, 9, 17), (6, 5), (3, 16, 5, 7), (64, 17), (3, 7, 5, 7), (2, 256, 3),
             (2, 257, 4), (20, 300), (2, 1024, 3), (1, 5000, 3), (2, 12287)]


@pytest.mark.parametrize("shape", KL_SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_emulated_kl_kernel_matches_float64(shape, reverse):
    g = torch.Generator().manual_seed(sum(shape))
    s, t = 3 * torch.randn(shape, generator=g), 3 * torch.randn(shape, generator=g)
    temperature = 2.5 if reverse else 1.0
    ref, ref_grad = value_and_grad64(kl64, s, t, temperature, reverse)
    for guard in emulate.GUARDS:  # an access just past the end, then just before the start, faults
        loss, grad = emulate.kl_fused(s, t, temperature, reverse, guard=guard)
        assert loss.shape == ref.shape and grad.shape == s.shape
        assert close(loss, ref) and close(grad, ref_grad)


@pytest.mark.parametrize("shape", [(5, 3), (4, 10), (3, 100), (2, 400)])  # each path of kl_row
def test_emulated_kl_kernel_keeps_precision_for_large_logits(shape):
    """Softmax ignores a common shift: logits around +-1e4 must lose no more than their own rounding."""
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(shape, generator=g) + 1e4, torch.randn(shape, generator=g) - 1e4  # float32 steps of 1e-3
    for reverse in (False, True):
        loss, grad = emulate.kl_fused(s, t, 1.0, reverse)
        ref, ref_grad = value_and_grad64(kl64, s, t, 1.0, reverse)  # the same float32 inputs, in float64
        assert close(loss, ref, rtol=1e-4, atol=1e-5) and close(grad, ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [4, 20, 300])  # a lane group, the register path, the shared-memory loop
def test_emulated_reverse_kl_gives_zero_gradient_at_masked_classes(k):
    """A -inf student logit has q = 0: its gradient is 0 (not 0 * inf), the rest is the KL of the
    other classes (q renormalised over them, p over all classes). The public loss agrees."""
    g = torch.Generator().manual_seed(k)
    s, t = torch.randn(2, k, generator=g), torch.randn(2, k, generator=g)
    s[0, 1] = s[1, 2] = s[1, 3] = float("-inf")
    loss, grad = emulate.kl_fused(s, t, 1.0, True)
    for row in (0, 1):
        keep = torch.isfinite(s[row]).nonzero().flatten()
        x = s[row, keep].double().requires_grad_(True)
        log_q, log_p = torch.log_softmax(x, 0), torch.log_softmax(t[row].double(), 0)[keep]
        kl = (log_q.exp() * (log_q - log_p)).sum()
        kl.backward()
        assert loss[row].item() == pytest.approx(kl.item(), rel=1e-5)
        assert torch.allclose(grad[row, keep].double(), x.grad, atol=1e-6)
    assert torch.equal(grad[~torch.isfinite(s)], torch.zeros(3))
    ref_loss, ref_grad = reference.kl_fused(s, t, 1.0, True)  # the reference agrees
    assert torch.allclose(ref_loss, loss, rtol=1e-5) and torch.allclose(ref_grad, grad, atol=1e-6)
    x = s.clone().requires_grad_(True)  # and so does the public loss's plain autograd (CPU) path
    kd.losses.kl_distillation(x, t, 1.0, "reverse", "sum").backward()
    assert torch.allclose(x.grad, grad, atol=1e-6)


@pytest.mark.parametrize("shape", [(300, 3), (2, 10, 9, 17), (50, 40)])
def test_emulated_kl_kernel_at_every_tile_size(shape):
    """The tile sizes the benchmark's tuning (KDLAB_KL_TILE) tries on a GPU, 1 to 256 positions."""
    g = torch.Generator().manual_seed(8)
    s, t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    ref, ref_grad = value_and_grad64(kl64, s, t, 1.5, True)
    n, k, hw = shape[0], shape[1], math.prod(shape[2:])
    for tile in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        assert emulate.kl_launch_config(n, k, hw, tile) == (tile, 2 * tile * (k | 1) * 4)  # the tile asked for
        loss, grad = emulate.kl_fused(s, t, 1.5, True, tile=tile)
        assert close(loss, ref) and close(grad, ref_grad), tile
    # defaults: 128 positions for 4-lane groups (K <= 4), 32 otherwise; halved until two rows fit 96 KiB
    assert [emulate.kl_launch_config(64, k, 1)[0] for k in (3, 10, 256, 1024, 5000, 12287)] == [128, 32, 32, 8, 2, 1]


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


@pytest.mark.parametrize("shape", [(37, 2), (300, 3), (6, 10), (3, 7, 5, 7), (2, 1024, 3)])
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
    mean, mean_grad = emulate.attention_fused(fs, ft, p, reduction=1, guard="start")
    assert close(mean, ref.mean()) and close(mean_grad, ref_grad / n)
    total, total_grad = emulate.attention_fused(fs, ft, p, reduction=2)
    assert close(total, ref.sum()) and close(total_grad, ref_grad)


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


@pytest.mark.parametrize("shared_kib", [48, 64, 96])  # GPUs before Turing, T4 (sm_75), A100 / H100
def test_python_limits_match_the_kernels(shared_kib, monkeypatch):
    """kdlab.kernels routes shapes beyond these limits to the reference; they must be the launchers' own."""
    classes, positions = emulate.kernel_limits(shared_kib * 1024)
    props = type("Props", (), {"shared_memory_per_block_optin": shared_kib * 1024})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    kernels._device_limits.cache_clear()
    try:
        assert kernels.device_limits(0) == (classes, positions)
    finally:
        kernels._device_limits.cache_clear()
    if shared_kib == 96:
        assert (kernels.MAX_CLASSES, kernels.MAX_POSITIONS) == (classes, positions) == (12287, 8192)


def test_emulated_kernels_at_and_beyond_their_limits():
    s = torch.randn(1, kernels.MAX_CLASSES)
    loss, _ = emulate.kl_fused(s, s.flip(1), 1.0, False)
    assert loss.item() > 0
    fs = torch.randn(1, 1, 64, kernels.MAX_POSITIONS // 64)
    loss, _ = emulate.attention_fused(fs, fs.flip(3))
    assert loss.item() > 0
    with pytest.raises(ValueError, match="12287"):
        emulate.kl_fused(torch.randn(1, kernels.MAX_CLASSES + 1), torch.randn(1, kernels.MAX_CLASSES + 1), 1.0, False)
    with pytest.raises(ValueError, match="8192"):
        emulate.attention_fused(torch.randn(1, 1, 1, 8193), torch.randn(1, 1, 1, 8193))
    empty, empty_grad = emulate.kl_fused(torch.randn(0, 3, 2), torch.randn(0, 3, 2), 1.0, False)
    assert empty.shape == (0, 2) and empty_grad.shape == (0, 3, 2)


@pytest.fixture(scope="module")
def planted():
    lib = emulate.build([Path(__file__).parent / "fixtures" / "simt_bugs.cpp"], name="kdlab_simt_bugs")

    def run(which, order="ascending", guard="end"):
        out, error = torch.empty(64), ctypes.create_string_buffer(512)
        code = lib.simt_bug(which, emulate.ORDERS[order], emulate.GUARDS[guard], ctypes.c_void_p(out.data_ptr()),
                            error, len(error))
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


def test_emulator_exposes_a_race_between_warps_across_shuffles(planted):
    ascending, error = planted(7, "ascending")
    descending, _ = planted(7, "descending")
    assert error == ""
    # ascending: warp 0 runs to the end of the kernel first, so warp 1 reads its write (32);
    # descending: warp 1 reads before warp 0 writes (1)
    assert torch.equal(ascending[32:], torch.full((32,), 32.0)) and torch.equal(descending[32:], torch.ones(32))


def test_emulator_guard_at_the_start_catches_reads_before_a_buffer(planted):
    _, error = planted(8, guard="start")
    assert "out-of-bounds access to dynamic shared memory (256 bytes): byte offset -4, by block 0, thread 0" in error
    out, error = planted(8, guard="end")  # the slack before the buffer is poisoned, not guarded
    assert error == "" and out[0].isnan() and torch.equal(out[1:], torch.ones(63))


def test_emulator_canaries_catch_writes_into_the_unguarded_slack(planted):
    """Each buffer touches a guard page on one side; a write just beyond the other side lands in the
    poisoned slack and is reported after the block."""
    assert "a write outside dynamic shared memory" in planted(9, guard="end")[1]  # before the start
    assert "a write outside dynamic shared memory" in planted(10, guard="start")[1]  # past the end
    assert "out-of-bounds access to dynamic shared memory" in planted(9, guard="start")[1]
