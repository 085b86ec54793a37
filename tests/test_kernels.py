"""kdlab.kernels on any machine: the reference implementations against float64 formulas written
here, the custom ops (reference path) under autograd, opcheck and torch.compile, the teacher-gradient
refusal, the fallback warning, the build guard, and the routing of the public losses
(kd.kernels.kl_distillation / attention_transfer: the fused op on CUDA when allowed, the formulas of
kd.losses / kd.feature_losses otherwise). The CUDA kernels themselves are tested in
test_kernels_gpu.py (skipped without a GPU)."""
import math

import pytest
import torch

import kdlab as kd
from kdlab import kernels
from kdlab.kernels import build, reference
from refs64 import at64, kl64


@pytest.mark.parametrize("shape", [(6, 10), (3, 7, 5, 3), (2, 257, 4)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_reference_matches_float64_values_and_gradients(shape, reverse, temperature):
    g = torch.Generator().manual_seed(0)
    s, t = 3 * torch.randn(shape, generator=g), 3 * torch.randn(shape, generator=g)
    loss, grad = reference.kl_fused(s, t, temperature, reverse)
    s64 = s.double().requires_grad_(True)
    ref = kl64(s64, t, temperature, reverse)
    (ref_grad,) = torch.autograd.grad(ref.sum(), s64)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    assert torch.allclose(loss.double(), ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


def test_kl_reference_is_stable_for_extreme_logits_and_keeps_half_grads():
    s = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]])
    t = torch.tensor([[-1000.0, 1000.0, 0.0], [-1000.0, 1000.0, 0.0]])
    for reverse in (False, True):
        loss, grad = reference.kl_fused(s, t, 1.0, reverse)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert loss[0].item() == pytest.approx(2000.0, rel=1e-6) and loss[1].item() == pytest.approx(0.0, abs=1e-6)
    loss, grad = reference.kl_fused(s.bfloat16(), t.bfloat16(), 2.0, False)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_attention_reference_matches_float64_with_different_channels(p):
    g = torch.Generator().manual_seed(1)
    fs, ft = torch.randn(3, 5, 4, 6, generator=g), torch.randn(3, 11, 4, 6, generator=g)
    loss, grad = reference.attention_fused(fs, ft, p)
    fs64 = fs.double().requires_grad_(True)
    ref = at64(fs64, ft, p)
    (ref_grad,) = torch.autograd.grad(ref.sum(), fs64)
    assert torch.allclose(loss.double(), ref, rtol=1e-5, atol=1e-7)
    assert torch.allclose(grad.double(), ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_kl_op_autograd_matches_the_autograd_reference(reduction):
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 9, 3, 3, generator=g), torch.randn(4, 9, 3, 3, generator=g)
    weights = torch.rand(4, 3, 3, generator=g)  # a non-uniform upstream gradient for reduction="none"
    out = {}
    for name, fn in (("op", kernels.kl_fused_loss), ("autograd", kd.losses.kl_distillation)):
        x = s.clone().requires_grad_(True)
        loss = fn(x, t, 2.0, "reverse", reduction)
        (loss * weights).sum().backward() if reduction == "none" else loss.backward()
        out[name] = (loss.detach(), x.grad)
    assert torch.allclose(out["op"][0], out["autograd"][0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(out["op"][1], out["autograd"][1], rtol=1e-4, atol=1e-7)


def test_attention_op_autograd_matches_feature_losses():
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.randn(2, 4, 5, 5, generator=g), torch.randn(2, 8, 5, 5, generator=g)
    a, b = fs.clone().requires_grad_(True), fs.clone().requires_grad_(True)
    kernels.attention_fused_loss(a, ft).backward()
    kd.feature_losses.attention_transfer(b, ft).backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("reduction", [1, 2])
def test_reduced_ops_return_the_gradient_of_the_reduced_loss(reduction):
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(4, 7, 3, generator=g), torch.randn(4, 7, 3, generator=g)
    loss, grad = reference.kl_fused(s, t, 2.0, True, reduction)
    s64 = s.double().requires_grad_(True)
    ref = kl64(s64, t, 2.0, True)
    ref = ref.mean() if reduction == 1 else ref.sum()
    (ref_grad,) = torch.autograd.grad(ref, s64)
    assert loss.shape == () and torch.allclose(loss.double(), ref, rtol=1e-5)
    assert torch.allclose(grad.double(), ref_grad, rtol=1e-4, atol=1e-8)
    fs, ft = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 6, 5, 5, generator=g)
    loss, grad = reference.attention_fused(fs, ft, 2.0, reduction)
    fs64 = fs.double().requires_grad_(True)
    ref = at64(fs64, ft, 2.0)
    (ref_grad,) = torch.autograd.grad(ref.mean() if reduction == 1 else ref.sum(), fs64)
    assert torch.allclose(grad.double(), ref_grad, rtol=1e-4, atol=1e-9)


def test_backward_of_a_reduced_op_returns_the_saved_gradient_without_a_copy():
    s, t = torch.randn(2, 5, 3, 3, requires_grad=True), torch.randn(2, 5, 3, 3)
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 1.0, False, 1)
    before = grad.clone()
    (returned,) = torch.autograd.grad(loss, s)
    assert returned.data_ptr() == grad.data_ptr()  # the very tensor the forward wrote: no pass over memory
    assert torch.equal(returned, before)  # upstream 1: untouched
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 1.0, False, 1)
    before = grad.clone()
    (returned,) = torch.autograd.grad(3 * loss, s)  # an upstream gradient other than 1 scales it, in place
    assert torch.allclose(returned, 3 * before) and returned.data_ptr() == grad.data_ptr()
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 1.0, False, 1)
    (3 * loss).backward()  # and .backward() accumulates that
    assert torch.allclose(s.grad, 3 * before)


def test_apply_upstream_leaves_the_gradient_alone_at_one():
    """The backward's step: ``grad *= factor`` in place, unless the factor is exactly 1."""
    g = torch.randn(4, 7)
    before = g.clone()
    torch.ops.kdlab.apply_upstream_(g, torch.tensor(1.0))
    assert torch.equal(g, before) and g._version == 0
    torch.ops.kdlab.apply_upstream_(g, torch.tensor(-0.5))
    assert torch.equal(g, -0.5 * before)
    g64 = torch.randn(3, dtype=torch.float64)  # float64 (the reference op) keeps a float64 factor
    before = g64.clone()
    torch.ops.kdlab.apply_upstream_(g64, torch.tensor(1 / 3, dtype=torch.float64))
    assert torch.equal(g64, before * (1 / 3))


def test_a_second_backward_through_a_retained_graph_is_refused():
    """The first backward scaled the saved gradient in place and handed it out; a second one would scale it
    again (and change what the first returned), so it raises. A gradient the first returned stays intact."""
    g = torch.Generator().manual_seed(12)
    s, t = torch.randn(2, 5, 3, generator=g, requires_grad=True), torch.randn(2, 5, 3, generator=g)
    loss = torch.ops.kdlab.kl_fused(s, t, 1.0, False, 1)[0]
    expected = reference.kl_fused(s.detach(), t, 1.0, False, 1)[1]
    (first,) = torch.autograd.grad(3 * loss, s, retain_graph=True)
    assert torch.allclose(first, 3 * expected)
    with pytest.raises(RuntimeError, match="one backward pass through a graph"):
        torch.autograd.grad(-2 * loss, s)
    assert torch.allclose(first, 3 * expected)
    per_position = torch.ops.kdlab.kl_fused(s, t, 1.0, False, 0)[0]  # reduction none multiplies out of place:
    w = torch.rand(per_position.shape, generator=g)  # any number of backwards
    for _ in range(2):
        (grad,) = torch.autograd.grad((w * per_position).sum(), s, retain_graph=True)
    x = s.detach().double().requires_grad_(True)
    (w.double() * kd.losses.kl_distillation(x, t.double(), 1.0, reduction="none")).sum().backward()
    assert torch.allclose(grad.double(), x.grad, rtol=1e-5, atol=1e-7)  # float32 against float64: rounding, about 1e-8


@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_weights_multiply_loss_and_gradient(reduction):
    """weight * weight_tensor (the alpha of weighted distillation, a scaler's scale) multiplies what the op
    returns, against float64 autograd of the weighted formula."""
    g = torch.Generator().manual_seed(13)
    s, t = torch.randn(3, 6, 2, 2, generator=g), torch.randn(3, 6, 2, 2, generator=g)
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, True, reduction, 0.5, torch.tensor(0.3))
    x = s.double().requires_grad_(True)
    ref = 0.15 * kd.losses.kl_distillation(x, t.double(), 2.0, "reverse", ["none", "mean", "sum"][reduction])
    ref.backward(torch.ones_like(ref))
    assert torch.allclose(loss.double(), ref.detach(), rtol=1e-5) and torch.allclose(grad.double(), x.grad, rtol=1e-4, atol=1e-9)
    fs, ft = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    loss, grad = torch.ops.kdlab.attention_fused(fs, ft, 2.0, reduction, -2.0, torch.tensor(0.25))
    y = fs.double().requires_grad_(True)
    per_sample = kd.feature_losses.attention_map(y) - kd.feature_losses.attention_map(ft.double())
    ref = -0.5 * per_sample.pow(2).sum(1)
    ref = [ref, ref.mean(), ref.sum()][reduction]
    ref.backward(torch.ones_like(ref))
    assert torch.allclose(loss.double(), ref.detach(), rtol=1e-5) and torch.allclose(grad.double(), y.grad, rtol=1e-4, atol=1e-9)
    torch.library.opcheck(torch.ops.kdlab.kl_fused.default, (s.requires_grad_(True), t, 2.0, True, reduction, 0.5,
                                                             torch.tensor(0.3)))
    w = torch.tensor(0.3, requires_grad=True)
    with pytest.raises(RuntimeError, match="no gradient for weight_tensor"):
        torch.ops.kdlab.kl_fused(s, t, 2.0, True, 1, 1.0, w)[0].backward()


def test_routed_losses_take_a_weight():
    """kernels.kl_distillation / attention_transfer with a weight equal weight times the formula (CPU: the
    formula path; a tensor weight is not differentiated on the fused path and is here)."""
    g = torch.Generator().manual_seed(14)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    for weight in (0.25, torch.tensor(0.25)):
        assert torch.allclose(kernels.kl_distillation(s, t, 2.0, weight=weight), 0.25 * kd.losses.kl_distillation(s, t, 2.0))
    fs, ft = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    assert torch.allclose(kernels.attention_transfer(fs, ft, weight=3.0), 3 * kd.feature_losses.attention_transfer(fs, ft))
    x = s.clone().requires_grad_(True)
    kernels.kl_fused_loss(x, t, 2.0, "forward", "mean", weight=torch.tensor(0.25)).backward()  # the op, weight folded in
    y = s.clone().requires_grad_(True)
    (0.25 * kd.losses.kl_distillation(y, t, 2.0)).backward()
    assert torch.allclose(x.grad, y.grad, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="one value"):
        kernels.kl_fused_loss(s, t, weight=torch.ones(2))


def test_double_backward_through_the_ops_raises_instead_of_dropping_terms():
    s, t = torch.randn(2, 5, 3, requires_grad=True), torch.randn(2, 5, 3)
    fs, ft = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 4, 4, 4)
    for x, loss in ((s, kernels.kl_fused_loss(s, t, 2.0)), (fs, kernels.attention_fused_loss(fs, ft))):
        with pytest.raises(RuntimeError, match="create_graph=True"):
            torch.autograd.grad(loss, x, create_graph=True)
    # the public losses off the fused path (CPU) are plain autograd: twice differentiable
    for loss in (kd.losses.kl_distillation(s, t, 2.0), kernels.kl_distillation(s, t, 2.0)):
        (g,) = torch.autograd.grad(loss, s, create_graph=True)
        assert g.requires_grad
    (g,) = torch.autograd.grad(kernels.attention_transfer(fs, ft), fs, create_graph=True)
    assert g.requires_grad


def test_opcheck_of_both_ops():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(3, 6, 2, 2, generator=g, requires_grad=True), torch.randn(3, 6, 2, 2, generator=g)
    torch.library.opcheck(torch.ops.kdlab.kl_fused.default, (s, t, 2.0, False))
    torch.library.opcheck(torch.ops.kdlab.kl_fused.default, (s, t, 2.0, True, 1))
    fs, ft = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True), torch.randn(2, 5, 4, 4, generator=g)
    torch.library.opcheck(torch.ops.kdlab.attention_fused.default, (fs, ft, 2.0))
    torch.library.opcheck(torch.ops.kdlab.attention_fused.default, (fs, ft, 2.0, 2))


def test_ops_under_torch_compile_fullgraph():
    def step(s, t, fs, ft):
        return kernels.kl_fused_loss(s, t, 2.0) + kernels.attention_fused_loss(fs, ft)

    g = torch.Generator().manual_seed(5)
    args = [torch.randn(2, 5, 3, 3, generator=g), torch.randn(2, 5, 3, 3, generator=g),
            torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 6, 4, 4, generator=g)]
    eager_in, comp_in = [a.clone().requires_grad_(i in (0, 2)) for i, a in enumerate(args)], \
        [a.clone().requires_grad_(i in (0, 2)) for i, a in enumerate(args)]
    eager = step(*eager_in)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*comp_in)
    eager.backward(), compiled.backward()
    assert torch.allclose(eager, compiled)
    assert torch.allclose(eager_in[0].grad, comp_in[0].grad) and torch.allclose(eager_in[2].grad, comp_in[2].grad)


def test_refusals_hold_when_autograd_grad_asks_for_the_student_alone():
    """A teacher or weight tensor that required a gradient at the forward is refused also by
    torch.autograd.grad(loss, student), which computes no gradient for them (the Python registration and,
    with KDLAB_TEST_EXTENSION=1, autograd.cpp)."""
    s, t = torch.randn(2, 4, 3, requires_grad=True), torch.randn(2, 4, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="no gradient for the teacher"):
        torch.autograd.grad(torch.ops.kdlab.kl_fused(s, t, 1.0, False, 1)[0], s)
    w = torch.tensor(0.5, requires_grad=True)
    with pytest.raises(RuntimeError, match="no gradient for weight_tensor"):
        torch.autograd.grad(torch.ops.kdlab.kl_fused(s, t.detach(), 1.0, False, 1, 1.0, w)[0], s)


def test_the_ops_backward_under_compiled_autograd():
    """torch.compile with compiled autograd traces the ops' backward (a C++ Function must not mark outputs
    non-differentiable there): the gradient of 3 * loss, against the reference's."""
    s, t = torch.randn(3, 5, 2, requires_grad=True), torch.randn(3, 5, 2)
    fs, ft = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 5, 4, 4)

    @torch.compile(backend="aot_eager")
    def train(s, t, fs, ft):
        loss = 3 * torch.ops.kdlab.kl_fused(s, t, 2.0, False, 1)[0] + torch.ops.kdlab.attention_fused(fs, ft, 2.0, 1)[0]
        loss.backward()

    with torch._dynamo.config.patch(compiled_autograd=True):
        train(s, t, fs, ft)
    assert torch.allclose(s.grad, 3 * reference.kl_fused(s.detach(), t, 2.0, False, 1)[1], atol=1e-6)
    assert torch.allclose(fs.grad, reference.attention_fused(fs.detach(), ft, 2.0, 1)[1], atol=1e-6)


def test_teacher_gradients_are_refused():
    s, t = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="teachers are frozen"):
        kernels.kl_fused_loss(s, t)
    loss, _ = torch.ops.kdlab.kl_fused(s, t, 1.0, False)
    with pytest.raises(RuntimeError, match="no gradient for the teacher"):
        loss.sum().backward()


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(kernels, "_state", {"checked": False, "available": False, "reason": "", "warned": False})


def test_build_guard_names_what_is_missing(monkeypatch):
    monkeypatch.setenv("KDLAB_KERNELS", "reference")
    assert "KDLAB_KERNELS=reference" in build.missing_requirement()
    monkeypatch.setenv("KDLAB_KERNELS", "auto")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "no CUDA support" in build.missing_requirement()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in build.missing_requirement()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    assert "nvcc" in build.missing_requirement()
    monkeypatch.setattr(build, "find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    from torch.utils import cpp_extension
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    assert "ninja" in build.missing_requirement()
    monkeypatch.setenv("KDLAB_KERNELS", "fast")
    with pytest.raises(ValueError, match="auto, reference, fused"):
        build.mode()


def test_fallback_is_announced_once_and_fused_mode_refuses(monkeypatch, fresh_state):
    monkeypatch.setattr(build, "missing_requirement", lambda: "nvcc (the CUDA compiler) was not found")
    assert kernels.available() is False and "nvcc" in kernels.reason()
    with pytest.warns(RuntimeWarning, match="nvcc.*reference implementation runs instead") as record:
        kernels._announce(kernels.reason())
        kernels._announce(kernels.reason())
    assert len(record) == 1
    monkeypatch.setattr(kernels, "_state", {"checked": False, "available": False, "reason": "", "warned": False})
    monkeypatch.setenv("KDLAB_KERNELS", "fused")
    with pytest.raises(RuntimeError, match="KDLAB_KERNELS=fused"):
        kernels.available()


def test_a_failed_build_falls_back_with_the_reason(monkeypatch, fresh_state):
    monkeypatch.setattr(build, "missing_requirement", lambda: None)

    def broken():
        raise RuntimeError("Error building extension 'kdlab_kernels'\nnvcc fatal: unsupported gpu architecture")

    monkeypatch.setattr(build, "compile_and_load", broken)
    assert kernels.available() is False and "unsupported gpu architecture" in kernels.reason()


def test_cpu_tensors_never_take_the_fused_path(fresh_state):
    assert not kernels.use_fused(torch.randn(2, 3))
    s = torch.randn(2, 3, requires_grad=True)
    assert not kernels.fused_path(s, torch.randn(2, 3))
    assert math.isfinite(kernels.kl_distillation(s, torch.randn(2, 3)).item())
    assert math.isfinite(kernels.attention_transfer(torch.randn(2, 3, 4, 4, requires_grad=True),
                                                    torch.randn(2, 5, 4, 4)).item())
    assert kernels._state["checked"] is False  # no build attempted for CPU tensors


def test_op_output_layouts_and_opcheck():
    base = torch.randn(3, 6, 5, 4)
    s, t = base.transpose(2, 3).requires_grad_(True), (0.5 * base).transpose(2, 3)  # [3, 6, 4, 5], not contiguous
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 1.5, False)
    assert grad.is_contiguous() and grad.shape == s.shape
    torch.library.opcheck(torch.ops.kdlab.kl_fused.default, (s, t, 1.5, False))
    # channels-last logits (class axis innermost) keep their layout: the CUDA kernel reads them in place
    s, t = (x.contiguous(memory_format=torch.channels_last) for x in (base, 0.5 * base))
    grad = torch.ops.kdlab.kl_fused(s.requires_grad_(True), t, 1.5, True, 1)[1]
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
    torch.library.opcheck(torch.ops.kdlab.kl_fused.default, (s, t, 1.5, True, 1))
    half_cl = torch.ops.kdlab.kl_fused(s, t.contiguous(), 1.5, True)[1]  # only one channels-last: contiguous
    assert half_cl.is_contiguous()
    fs = torch.randn(2, 3, 6, 5).transpose(2, 3).requires_grad_(True)
    torch.library.opcheck(torch.ops.kdlab.attention_fused.default, (fs, torch.randn(2, 4, 5, 6), 2.0))


def test_mixed_dtypes_and_empty_batches_use_the_reference_path():
    assert not kernels.use_fused(torch.randn(2, 3), torch.randn(2, 3).double())
    loss, grad = torch.ops.kdlab.kl_fused(torch.randn(0, 4, 2, 2), torch.randn(0, 4, 2, 2), 1.0, False)
    assert loss.shape == (0, 2, 2) and grad.shape == (0, 4, 2, 2)


def test_kl_logits_beyond_the_kernels_32_bit_offsets_take_the_formula(monkeypatch):
    """The KL kernel's offsets within a sample are 32-bit: (K + 64) H W < 2^31 (kl.cu refuses the rest), so
    the routed loss sends larger samples to the formula (meta tensors: shapes without memory)."""
    calls = []
    monkeypatch.setattr(kernels, "use_fused", lambda x, other=None: True)
    monkeypatch.setitem(kernels._state, "backend", "cuda")
    monkeypatch.setattr(kernels, "kl_fused_loss", lambda *a: calls.append(a[0].shape) or a[0].sum())
    for k, hw, fused in ((64, 2 ** 24 - 1, True), (64, 2 ** 24, False), (2, 2 ** 30, False)):
        s = torch.empty(1, k, hw, device="meta", requires_grad=True)
        kernels.kl_distillation(s, torch.empty(1, k, hw, device="meta"))
        assert (calls[-1:] == [s.shape]) == fused, (k, hw)


def test_public_losses_take_the_fused_path_only_for_a_backward(monkeypatch):
    """The routing of kd.kernels.kl_distillation / attention_transfer, with the CUDA checks faked: both backends
    take any K and H W."""
    calls = []
    monkeypatch.setattr(kernels, "use_fused", lambda x, other=None: True)
    monkeypatch.setattr(kernels, "kl_fused_loss", lambda *a: calls.append(("kl", a[2:])) or a[0].sum())
    monkeypatch.setattr(kernels, "attention_fused_loss", lambda *a: calls.append(("at", a[2:])) or a[0].sum())
    s, t = torch.randn(2, 8, 3, requires_grad=True), torch.randn(2, 8, 3)
    fs, ft = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 5, 4, 4)
    kernels.kl_distillation(s, t, 2, "reverse", "sum", weight=0.5)
    kernels.attention_transfer(fs, ft, 3.0)
    assert calls == [("kl", (2.0, "reverse", "sum", 0.5)), ("at", (3.0, 1.0))]  # arguments validated and passed on
    with torch.no_grad():  # evaluation: no gradient to write
        kernels.kl_distillation(s, t)
        kernels.attention_transfer(fs, ft)
    kernels.kl_distillation(s.detach(), t)
    assert len(calls) == 2
    kernels.kl_distillation(torch.randn(2, 20000, requires_grad=True), torch.randn(2, 20000))  # no class limit
    kernels.attention_transfer(torch.randn(2, 3, 100, 100, requires_grad=True), torch.randn(2, 5, 100, 100))  # nor H W
    assert len(calls) == 4
    kernels.kl_distillation(s, t, weight=torch.tensor(0.5, requires_grad=True))  # a learned weight: the formula
    assert len(calls) == 4
    # the formulas themselves never route: kd.losses / kd.feature_losses are plain PyTorch
    kd.losses.kl_distillation(s, t)
    kd.feature_losses.attention_transfer(fs, ft)
    assert len(calls) == 4
    # the fused path still validates like the formula
    with pytest.raises(ValueError, match="temperature"):
        kernels.kl_distillation(s, t, 0.0)
    with pytest.raises(ValueError, match="spatial sizes must match"):
        kernels.attention_transfer(fs, torch.randn(2, 5, 2, 8))
    assert len(calls) == 4


@pytest.mark.parametrize("shape", [(6, 10), (3, 7, 5, 3)])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_routed_kl_on_cpu_equals_the_formula(shape, direction, reduction):
    g = torch.Generator().manual_seed(7)
    s, t = 2 * torch.randn(shape, generator=g), 2 * torch.randn(shape, generator=g)
    a, b = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    routed = kernels.kl_distillation(a, t, 1.5, direction, reduction)
    formula = kd.losses.kl_distillation(b, t, 1.5, direction, reduction)
    assert torch.equal(routed, formula)
    routed.sum().backward(), formula.sum().backward()
    assert torch.equal(a.grad, b.grad)
    ref = kl64(s, t, 1.5, direction == "reverse")  # and both agree with the float64 formula
    ref = {"mean": ref.mean(), "sum": ref.sum(), "none": ref}[reduction]
    assert torch.allclose(routed.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_routed_attention_transfer_on_cpu_equals_the_formula(p):
    g = torch.Generator().manual_seed(8)
    fs, ft = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 7, 5, 6, generator=g)
    a, b = fs.clone().requires_grad_(True), fs.clone().requires_grad_(True)
    routed, formula = kernels.attention_transfer(a, ft, p), kd.feature_losses.attention_transfer(b, ft, p)
    assert torch.equal(routed, formula)
    routed.backward(), formula.backward()
    assert torch.equal(a.grad, b.grad)
    assert routed.item() == pytest.approx(at64(fs, ft, p).mean().item(), rel=1e-5)
