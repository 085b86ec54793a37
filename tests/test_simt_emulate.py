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


# every launch plan (kl_kernel.cuh), at and around each boundary, with partial tiles and partial rows:
# columns ([N, K, HW], lane = position): 2, 8 or 32 classes per thread in registers (32: a full-tile kernel
# when K is a multiple of 32), or streaming (K > 256);
# rows ([N, K]): G <= 32 threads per row sharing a block, one row per block (G <= 512), streaming beyond,
# each with 4-byte and 16-byte loads (K % 4 == 0)
KL_COLUMNS = [(2, 4, 9, 17), (3, 16, 5, 7), (3, 17, 5, 7), (2, 64, 33), (2, 65, 3), (2, 256, 3), (1, 96, 40),
              (1, 112, 40), (2, 257, 4), (1, 1030, 3)]
KL_ROWS = [(37, 2), (300, 3), (64, 12), (6, 17), (20, 300), (3, 516), (2, 1023), (2, 8192), (1, 8196), (1, 9999)]
KL_SHAPES = KL_COLUMNS + KL_ROWS


def test_kl_shapes_cover_every_plan():
    """The shapes above reach every kernel instantiation the CUDA launcher can choose for float32."""
    seen = set()
    for shape in KL_SHAPES:
        plan = emulate.kl_plan(shape[0], shape[1], math.prod(shape[2:]), rows=len(shape) == 2)
        seen.add((plan["kernel"], plan["per"], plan["vec"], plan["block_row"], plan["full"]))
    columns = {("columns", per, 1, False, False) for per in (2, 8, 32, 0)} | {("columns", 32, 1, False, True)}
    rows = {("rows", per, vec, block, False) for vec in (1, 4) for per, block in ((4, False), (4, True), (0, True))}
    assert seen == columns | rows
    # the full-tile kernel exactly where every thread holds 32 classes (a looser test would read past the last class)
    assert [k for k in range(2, 300) if emulate.kl_plan(1, k, 5, rows=False)["full"]] == [96, 128, 160, 192, 224, 256]
    # threads per row grow with K: one thread for a 16-byte row, a warp for 512 classes, 512 threads, then streaming
    assert [emulate.kl_plan(1, k, 1, rows=True)["group"] for k in (4, 512, 8192, 8196)] == [1, 32, 512, 512]
    assert emulate.kl_plan(1, 8196, 1, rows=True)["per"] == 0


@pytest.mark.parametrize("shape", KL_SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_emulated_kl_kernel_matches_float64(shape, reverse):
    g = torch.Generator().manual_seed(sum(shape))
    s, t = 3 * torch.randn(shape, generator=g), 3 * torch.randn(shape, generator=g)
    temperature = 2.5 if reverse else 0.7  # neither a power of two: 1 / T is inexact
    ref, ref_grad = value_and_grad64(kl64, s, t, temperature, reverse)
    for guard in emulate.GUARDS:  # an access just past the end, then just before the start, faults
        loss, grad = emulate.kl_fused(s, t, temperature, reverse, guard=guard)
        assert loss.shape == ref.shape and grad.shape == s.shape
        assert close(loss, ref) and close(grad, ref_grad)


@pytest.mark.parametrize("shape", [(5, 3), (4, 10), (3, 100), (2, 400), (1, 8196),  # rows, streaming
                                   (1, 100, 3), (1, 128, 3), (1, 300, 3)])  # columns: 32 a thread, full tile, streaming
def test_emulated_kl_kernel_keeps_precision_for_large_logits(shape):
    """Softmax ignores a common shift: logits around +-1e4 must lose no more than their own rounding, at any
    temperature. The kernel subtracts a maximum before dividing by T (errors about 3e-7 of the scale here);
    dividing first, as it did until 2026-11-30, rounds s / T to 1e-3 and gave errors of 1e-4 to 5e-4 at T = 0.7."""
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(shape, generator=g) + 1e4, torch.randn(shape, generator=g) - 1e4  # float32 steps of 1e-3
    for temperature in (1.0, 0.7):
        for reverse in (False, True):
            loss, grad = emulate.kl_fused(s, t, temperature, reverse)
            ref, ref_grad = value_and_grad64(kl64, s, t, temperature, reverse)  # the same float32 inputs, in float64
            assert close(loss, ref, rtol=1e-5, atol=1e-5) and close(grad, ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [4, 20, 300, 9999])  # rows: one thread, a lane group, a warp, streaming
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


@pytest.mark.parametrize("layout", ["rows", "columns", "streaming rows", "streaming columns"])
def test_emulated_kl_kernel_masked_and_underflowing_classes_match_the_reference(layout):
    """Where a thread's share of the weighting distribution underflows at the position's maximum while
    it holds a -inf logit opposite it (an infinite numerator times a vanishing weight), and where a whole
    row of the weighting distribution is masked, the kernel gives the float32 reference's finite loss:
    no NaN that depends on how the classes are split between threads (found in a review; both layouts).
    Streaming: the thread's first batch holds the underflowing part, so its own running maximum rises
    past it later (the online rescaling meets the same 0 * inf)."""
    inf = float("inf")
    shape = {"rows": (1, 20), "columns": (1, 20, 1, 2), "streaming rows": (1, 8196),
             "streaming columns": (1, 1030, 1, 2)}[layout]
    s, t = torch.zeros(shape), torch.zeros(shape)
    if layout == "rows":  # 4 threads' packs of 4 classes: lane 1 holds classes 4-7 and 12-15
        t[0, 4:8] = t[0, 12:16] = -200.0
        s[0, 4] = -inf  # the teacher's weight there is exp(-200): 0 in float32
    elif layout == "columns":  # 3 warps of 8 classes: warp 1 holds classes 1, 4, 7, ...
        t[0, 1::3] = -200.0
        s[0, 4] = -inf
    elif layout == "streaming rows":  # 512 threads; thread 0's first batch: packs 0 and 512 (classes 0-3, 2048-2051)
        t[0, 0:4] = t[0, 2048:2052] = -200.0
        s[0, 0] = -inf
    else:  # 8 warps; warp 1's first two batches of 4: classes 1, 9, ..., 57
        t[0, 1:64:8] = -200.0
        s[0, 9] = -inf
    masked_student = torch.randn(2, 20, generator=torch.Generator().manual_seed(1))
    masked_student[1] = -inf
    masked_teacher = masked_student.flip(0).contiguous()
    cases = [(s, t, False), (t, s, True)]  # reverse: the student's weight underflows opposite a -inf teacher logit
    if layout.endswith("rows"):
        cases += [(masked_student, torch.randn(2, 20), True), (torch.randn(2, 20), masked_teacher, False)]
    for a, b, reverse in cases:
        loss, grad = emulate.kl_fused(a, b, 1.0, reverse)
        ref_loss, ref_grad = reference.kl_fused(a, b, 1.0, reverse)
        assert torch.isfinite(loss).all() and torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6), (reverse, loss, ref_loss)
        finite = torch.isfinite(ref_grad)
        assert torch.allclose(grad[finite], ref_grad[finite], atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1030, 1, 2), (1, 8196)])  # streaming columns, streaming rows
def test_emulated_streaming_kl_is_infinite_where_a_masked_student_class_has_teacher_weight(shape):
    """A thread's first batches with every student logit masked (ma = -inf) while the teacher's are finite:
    the forward KL is +inf as in the reference, not NaN from -inf - -inf when the next batch arrives (found in
    a review); reverse, with the roles swapped, likewise; and finite once those classes have no weight."""
    inf = float("inf")
    s, t = torch.zeros(shape), torch.zeros(shape)
    # thread 0's first two batches: columns, classes 0, 8, ..., 56 (warp 0); rows, packs 0, 512, 1024, 1536
    masked = torch.zeros(shape[1], dtype=torch.bool)
    if len(shape) == 4:
        masked[0:64:8] = True
    else:
        for pack in (0, 512, 1024, 1536):
            masked[4 * pack:4 * pack + 4] = True
    s[0, masked] = -inf
    for a, b, reverse in ((s, t, False), (t, s, True)):
        loss, _ = emulate.kl_fused(a, b, 1.0, reverse)
        ref_loss, _ = reference.kl_fused(a, b, 1.0, reverse)
        assert torch.isinf(ref_loss).all() and torch.equal(loss, ref_loss), (reverse, loss, ref_loss)
    t[0, masked] = -inf  # the teacher masks them too: no weight there, a finite KL
    loss, _ = emulate.kl_fused(s, t, 1.0, False)
    assert torch.isfinite(loss).all() and torch.allclose(loss, reference.kl_fused(s, t, 1.0, False)[0], atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (2, 300, 2, 3), (1, 8, 4, 4), (3, 20, 1, 5)])
@pytest.mark.parametrize("reverse", [False, True])
def test_emulated_kl_kernel_reads_channels_last_logits_as_rows(shape, reverse):
    """[N, K, H, W] stored channels-last has the class axis innermost: the rows kernel reads it in place
    and writes a channels-last gradient."""
    g = torch.Generator().manual_seed(sum(shape))
    s, t = (3 * torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last) for _ in range(2))
    ref, ref_grad = value_and_grad64(kl64, s, t, 1.5, reverse)
    loss, grad = emulate.kl_fused(s, t, 1.5, reverse)
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
    assert close(loss, ref) and close(grad, ref_grad)
    assert reference.kl_fused(s, t, 1.5, reverse)[1].stride() == grad.stride()  # the reference's layout agrees


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


@pytest.mark.parametrize("threads", [64, 96, 1024])
def test_emulated_streaming_rows_take_any_block_size(threads):
    """The streaming rows kernel at the block sizes KDLAB_KL_STREAM_THREADS can choose (kl.cu), with 4-byte and
    16-byte loads, against float64 (the guards catch a thread reading past its row)."""
    g = torch.Generator().manual_seed(threads)
    for shape in [(2, 4101), (2, 9000)]:
        s, t = 3 * torch.randn(shape, generator=g), 3 * torch.randn(shape, generator=g)
        assert emulate.kl_plan(*shape, 1, rows=True)["per"] == 0  # streaming
        for reverse in (False, True):
            ref, ref_grad = value_and_grad64(kl64, s, t, 1.5, reverse)
            for guard in emulate.GUARDS:
                loss, grad = emulate.kl_fused(s, t, 1.5, reverse, stream_threads=threads, guard=guard)
                assert close(loss, ref) and close(grad, ref_grad)


@pytest.mark.parametrize("shape", [(4, 9, 3, 5), (2, 128, 3, 5), (6, 300), (2, 20000)])  # columns, full, rows, streaming
def test_emulated_kernels_apply_the_weight_to_loss_and_gradient(shape):
    """weight * weight_tensor multiplies the loss and the gradient the kernel writes (the alpha of weighted
    distillation, folded in: the backward has nothing left to scale), of either sign, in both directions."""
    g = torch.Generator().manual_seed(12)
    s, t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    for reverse, weight in ((False, 0.5), (True, -0.5)):
        per_position, ref_grad = value_and_grad64(kl64, s, t, 2.0, reverse)
        loss, grad = emulate.kl_fused(s, t, 2.0, reverse, 1, weight=weight, weight_tensor=torch.tensor(0.3))
        factor = 0.3 * weight
        assert close(loss, factor * per_position.mean()) and close(grad, factor * ref_grad / per_position.numel())
    fs, ft = torch.randn(2, 3, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g)
    at_ref, at_grad = value_and_grad64(at64, fs, ft, 2.0)
    loss, grad = emulate.attention_fused(fs, ft, 2.0, 2, weight=-2.0, weight_tensor=torch.tensor(0.25))
    assert close(loss, -0.5 * at_ref.sum()) and close(grad, -0.5 * at_grad)


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


@pytest.mark.parametrize("shape", [(37, 2), (6, 10), (3, 516), (1, 9999), (3, 7, 5, 7), (2, 100, 3), (2, 1024, 3)])
def test_emulated_kl_kernel_is_race_free_under_three_schedules(shape):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    runs = [emulate.kl_fused(s, t, 2.0, True, order=order, seed=11) for order in ORDERS]
    for loss, grad in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(grad, runs[0][1])


# (N, C_S, C_T, H, W): one tile of 32 positions; a partial tile and fewer channels than warps; H W > 1,024
# (the stats block loops); channels that fill the 8-accumulator loop and leave a remainder
AT_SHAPES = [(2, 3, 5, 4, 8), (3, 5, 11, 5, 7), (2, 3, 4, 33, 34), (2, 70, 131, 3, 3)]


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


def test_emulated_kernels_have_no_shape_limit():
    """Classes up to 65,535 (a vocabulary) and any H W: no shared-memory limit remains."""
    g = torch.Generator().manual_seed(6)
    s = torch.randn(1, 65535, generator=g)
    loss, grad = emulate.kl_fused(s, s.flip(1), 1.0, False)
    ref, ref_grad = value_and_grad64(kl64, s, s.flip(1), 1.0, False)
    assert close(loss, ref) and close(grad, ref_grad)
    fs, ft = torch.randn(1, 2, 100, 100, generator=g), torch.randn(1, 3, 100, 100, generator=g)  # 10,000 positions
    loss, grad = emulate.attention_fused(fs, ft)
    ref, ref_grad = value_and_grad64(at64, fs, ft, 2.0)
    assert close(loss, ref) and close(grad, ref_grad)
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
