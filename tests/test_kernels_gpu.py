"""The fused CUDA kernels against the reference (skipped without a CUDA GPU): values and gradients
over random shapes and dtypes, extreme logits, non-contiguous inputs, determinism, opcheck and
torch.compile(fullgraph=True)."""
import os

import pytest
import torch

from kdlab import kernels
from kdlab.kernels import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# tolerances on |fused - reference| relative to the reference's scale, per input dtype
TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-2, 2e-3), torch.bfloat16: (5e-2, 1e-2)}


@pytest.fixture(scope="module", autouse=True)
def fused():
    if os.environ.get("KDLAB_KERNELS") == "reference" or not kernels.available():
        pytest.skip(f"fused kernels unavailable: {kernels.reason()}")


def _ref_inputs(*xs):
    return [x.float() for x in xs]


SHAPES = [(64, 10), (33, 2), (8, 257, 5, 7), (4, 1024, 3, 3), (2, 3, 31, 17), (16, 256, 28, 28)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
def test_kl_fused_matches_reference(shape, dtype, reverse):
    g = torch.Generator(device="cuda").manual_seed(0)
    s = (4 * torch.randn(shape, generator=g, device="cuda")).to(dtype)
    t = (4 * torch.randn(shape, generator=g, device="cuda")).to(dtype)
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, reverse)
    ref_loss, ref_grad = reference.kl_fused(*_ref_inputs(s, t), 2.0, reverse)
    rtol, atol = TOL[dtype]
    assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.shape == s.shape
    assert torch.allclose(loss, ref_loss, rtol=rtol, atol=atol * ref_loss.abs().max().item() + 1e-6)
    assert torch.allclose(grad.float(), ref_grad, rtol=rtol, atol=atol * ref_grad.abs().max().item() + 1e-6)


def test_kl_fused_extreme_logits_and_non_contiguous_inputs():
    s = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]], device="cuda")
    t = torch.tensor([[-1000.0, 1000.0, 0.0], [-1000.0, 1000.0, 0.0]], device="cuda")
    for reverse in (False, True):
        loss, grad = torch.ops.kdlab.kl_fused(s, t, 1.0, reverse)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert torch.allclose(loss.cpu(), torch.tensor([2000.0, 0.0]), atol=1e-3)
        # forward: T (q - p) = (1, -1, 0) and 0; reverse: q is one-hot at the student's own class,
        # where log q - log p - KL = 0 - (-2000) - 2000 = 0, and 0 elsewhere
        expected = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]) if not reverse else torch.zeros(2, 3)
        assert torch.allclose(grad.cpu(), expected, atol=1e-4)
    base = torch.randn(6, 8, 12, 10, device="cuda")
    s_nc, t_nc = base.transpose(2, 3), (base * 0.5 + 1).transpose(2, 3)  # [6, 8, 10, 12], not contiguous
    loss, grad = torch.ops.kdlab.kl_fused(s_nc, t_nc, 1.5, False)
    ref_loss, ref_grad = reference.kl_fused(s_nc, t_nc, 1.5, False)
    assert torch.allclose(loss, ref_loss, rtol=1e-4, atol=1e-6) and torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shapes", [((8, 64, 32, 32), (8, 256, 32, 32)), ((3, 5, 7, 9), (3, 12, 7, 9)),
                                    ((2, 16, 64, 64), (2, 16, 64, 64))])
def test_attention_fused_matches_reference(dtype, shapes):
    g = torch.Generator(device="cuda").manual_seed(1)
    fs = torch.randn(shapes[0], generator=g, device="cuda").to(dtype)
    ft = torch.randn(shapes[1], generator=g, device="cuda").to(dtype)
    loss, grad = torch.ops.kdlab.attention_fused(fs, ft, 2.0)
    ref_loss, ref_grad = reference.attention_fused(*_ref_inputs(fs, ft), 2.0)
    rtol, atol = TOL[dtype]
    assert torch.allclose(loss, ref_loss, rtol=rtol, atol=atol * ref_loss.abs().max().item() + 1e-7)
    assert torch.allclose(grad.float(), ref_grad, rtol=rtol, atol=atol * ref_grad.abs().max().item() + 1e-9)


@pytest.mark.parametrize("reduction", [1, 2])
def test_reduced_fused_ops_match_reference(reduction):
    g = torch.Generator(device="cuda").manual_seed(5)
    s, t = torch.randn(8, 64, 6, 6, generator=g, device="cuda"), torch.randn(8, 64, 6, 6, generator=g, device="cuda")
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, False, reduction)
    ref_loss, ref_grad = reference.kl_fused(s, t, 2.0, False, reduction)
    assert loss.shape == () and torch.allclose(loss, ref_loss, rtol=1e-5) and torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-9)
    fs, ft = torch.randn(4, 8, 16, 16, generator=g, device="cuda"), torch.randn(4, 16, 16, 16, generator=g, device="cuda")
    loss, grad = torch.ops.kdlab.attention_fused(fs, ft, 2.0, reduction)
    ref_loss, ref_grad = reference.attention_fused(fs, ft, 2.0, reduction)
    assert torch.allclose(loss, ref_loss, rtol=1e-5) and torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-9)


def test_fused_results_are_bitwise_deterministic():
    g = torch.Generator(device="cuda").manual_seed(2)
    s, t = torch.randn(32, 256, 16, 16, generator=g, device="cuda"), torch.randn(32, 256, 16, 16, generator=g, device="cuda")
    runs = [torch.ops.kdlab.kl_fused(s, t, 2.0, False) for _ in range(3)]
    assert all(torch.equal(r[0], runs[0][0]) and torch.equal(r[1], runs[0][1]) for r in runs)
    fs, ft = torch.randn(16, 64, 32, 32, generator=g, device="cuda"), torch.randn(16, 128, 32, 32, generator=g, device="cuda")
    at = [torch.ops.kdlab.attention_fused(fs, ft, 2.0) for _ in range(3)]
    assert all(torch.equal(r[0], at[0][0]) and torch.equal(r[1], at[0][1]) for r in at)


def test_public_losses_dispatch_to_the_kernel_and_backpropagate():
    from kdlab import feature_losses, losses

    g = torch.Generator(device="cuda").manual_seed(3)
    s = torch.randn(16, 64, 8, 8, generator=g, device="cuda", requires_grad=True)
    t = torch.randn(16, 64, 8, 8, generator=g, device="cuda")
    assert kernels.fused_path(s, t, classes=64)
    kernels.kl_distillation(s, t, 2.0).backward()
    s_ref = s.detach().double().requires_grad_(True)
    kernels.kl_distillation(s_ref, t.double(), 2.0).backward()  # float64 takes the formula
    assert torch.allclose(s.grad.double(), s_ref.grad, rtol=1e-4, atol=1e-8)
    s_formula = s.detach().clone().requires_grad_(True)
    losses.kl_distillation(s_formula, t, 2.0).backward()  # the formula on the same CUDA tensors
    assert torch.allclose(s.grad, s_formula.grad, rtol=1e-4, atol=1e-5 * s_formula.grad.abs().max().item())
    fs = torch.randn(4, 8, 16, 16, generator=g, device="cuda", requires_grad=True)
    ft = torch.randn(4, 32, 16, 16, generator=g, device="cuda")
    kernels.attention_transfer(fs, ft).backward()
    fs_formula = fs.detach().clone().requires_grad_(True)
    feature_losses.attention_transfer(fs_formula, ft).backward()
    assert torch.isfinite(fs.grad).all()
    assert torch.allclose(fs.grad, fs_formula.grad, rtol=1e-4, atol=1e-5 * fs_formula.grad.abs().max().item())


def test_opcheck_and_compile_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(4)
    s = torch.randn(4, 10, 3, 3, generator=g, device="cuda", requires_grad=True)
    t = torch.randn(4, 10, 3, 3, generator=g, device="cuda")
    torch.library.opcheck(torch.ops.kdlab.kl_fused.default, (s, t, 2.0, True))
    fs = torch.randn(2, 3, 8, 8, generator=g, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.kdlab.attention_fused.default, (fs, torch.randn(2, 6, 8, 8, device="cuda"), 2.0))

    def f(s, t):
        return kernels.kl_distillation(s, t, 2.0) * 3

    compiled = torch.compile(f, fullgraph=True)
    assert torch.allclose(compiled(s, t), f(s, t))


def test_empty_batches_mixed_dtypes_and_transposed_inputs_on_cuda():
    empty = torch.randn(0, 4, 3, 3, device="cuda")
    loss, grad = torch.ops.kdlab.kl_fused(empty, empty.clone(), 1.0, False)
    assert loss.shape == (0, 3, 3) and grad.shape == (0, 4, 3, 3)
    s = torch.randn(8, 16, 4, 4, device="cuda").bfloat16().requires_grad_(True)
    assert not kernels.fused_path(s, s.detach().float() + 1)
    assert torch.isfinite(kernels.kl_distillation(s, s.detach().float() + 1))  # mixed dtypes: the formula
    base = torch.randn(3, 6, 5, 4, device="cuda")
    torch.library.opcheck(torch.ops.kdlab.kl_fused.default,
                          (base.transpose(2, 3).requires_grad_(True), base.transpose(2, 3), 1.5, False))


@pytest.mark.parametrize("shape", [(16, 64, 8, 8), (64, 256, 32, 32)])  # 256 KiB (multiply), 64 MiB (shortcut)
def test_reduced_backward_below_and_above_the_upstream_check_size(shape):
    g = torch.Generator(device="cuda").manual_seed(6)
    s = torch.randn(shape, generator=g, device="cuda", requires_grad=True)
    t = torch.randn(shape, generator=g, device="cuda")
    assert (s.numel() * 4 >= kernels.CHECK_UPSTREAM_ONE_BYTES) == (shape[0] == 64)
    for weight in (1.0, 0.25):
        s.grad = None
        loss = kernels.kl_distillation(s, t, 2.0, "forward", "mean")
        (loss * weight).backward() if weight != 1.0 else loss.backward()
        _, ref_grad = reference.kl_fused(s.detach(), t, 2.0, False, 1)
        assert torch.allclose(s.grad, weight * ref_grad, rtol=1e-4, atol=1e-12)
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, False, 1)
    (returned,) = torch.autograd.grad(loss, s)
    # above the threshold the saved gradient itself comes back; below it, a multiplied copy
    assert (returned.data_ptr() == grad.data_ptr()) == (shape[0] == 64)


def test_large_shapes_at_the_shared_memory_limits():
    """H W above 6,128 needs the opted-in shared memory (> 48 KiB); K at the device's class limit."""
    max_classes, max_positions = kernels.device_limits(torch.cuda.current_device())
    g = torch.Generator(device="cuda").manual_seed(7)
    fs = torch.randn(2, 8, 64, max_positions // 64, generator=g, device="cuda")
    ft = torch.randn(2, 16, 64, max_positions // 64, generator=g, device="cuda")
    loss, grad = torch.ops.kdlab.attention_fused(fs, ft, 2.0)
    ref_loss, ref_grad = reference.attention_fused(fs, ft, 2.0)
    assert torch.allclose(loss, ref_loss, rtol=1e-4) and torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-9)
    s, t = torch.randn(3, max_classes, generator=g, device="cuda"), torch.randn(3, max_classes, generator=g, device="cuda")
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, True)
    ref_loss, ref_grad = reference.kl_fused(s, t, 2.0, True)
    assert torch.allclose(loss, ref_loss, rtol=1e-4) and torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-9)
    with pytest.raises(RuntimeError, match="exceeds the kernel's limit"):
        too_wide = torch.randn(1, max_classes + 1, device="cuda")
        torch.ops.kdlab.kl_fused(too_wide, too_wide.clone(), 1.0, False)


def test_public_losses_run_the_cuda_kernels():
    from torch.profiler import ProfilerActivity, profile

    s, t = torch.randn(8, 32, 4, 4, device="cuda", requires_grad=True), torch.randn(8, 32, 4, 4, device="cuda")
    fs, ft = torch.randn(4, 8, 8, 8, device="cuda", requires_grad=True), torch.randn(4, 16, 8, 8, device="cuda")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        kernels.kl_distillation(s, t, 2.0).backward()
        kernels.attention_transfer(fs, ft).backward()
        torch.cuda.synchronize()
    names = " ".join(e.name for e in prof.events())
    assert "kl_fused_kernel" in names and "attention_fused_kernel" in names


def test_large_logits_and_masked_classes_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(8)
    for shape in [(64, 3), (64, 10), (8, 100, 4), (8, 400)]:  # each path of kl_row
        s = torch.randn(shape, generator=g, device="cuda") + 1e4
        t = torch.randn(shape, generator=g, device="cuda") - 1e4
        for reverse in (False, True):
            loss, grad = torch.ops.kdlab.kl_fused(s, t, 1.0, reverse)
            ref_loss, ref_grad = reference.kl_fused(s.double(), t.double(), 1.0, reverse)
            assert torch.allclose(loss.double(), ref_loss, rtol=1e-4, atol=1e-5)
            assert torch.allclose(grad.double(), ref_grad, rtol=1e-4, atol=1e-5)
    s = torch.tensor([[0.5, float("-inf"), 1.0, -0.3]], device="cuda")
    loss, grad = torch.ops.kdlab.kl_fused(s, torch.zeros_like(s), 1.0, True)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and grad[0, 1].item() == 0.0
