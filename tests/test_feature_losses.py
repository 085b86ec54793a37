"""Feature distillation losses (kdlab.feature_losses) against float64 formulas written here. The
feature terms of the distillation loop are tested in test_methods_gan.py."""
import pytest
import torch

import kdlab as kd
from kdlab import feature_losses as fl


def _reference_attention(fs, ft, p=2.0):
    # a = mean_c |F|^p, flattened per sample, divided by its L2 norm; loss = mean_n sum_j (a_S - a_T)^2
    def norm_map(f):
        a = (f.abs() ** p).sum(1) / f.shape[1]
        a = a.reshape(len(f), -1)
        return a / torch.sqrt((a * a).sum(1, keepdim=True))
    return ((norm_map(fs) - norm_map(ft)) ** 2).sum(1).mean()


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_transfer_matches_float64_reference_with_different_channels(p):
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(3, 5, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(3, 11, 6, 7, generator=g, dtype=torch.float64)
    ours = fl.attention_transfer(fs.float(), ft.float(), p)
    ref = _reference_attention(fs, ft, p)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    (g_ref,) = torch.autograd.grad(ref, fs)
    fs32 = fs.detach().float().requires_grad_(True)
    (g_ours,) = torch.autograd.grad(fl.attention_transfer(fs32, ft.float(), p), fs32)
    assert torch.allclose(g_ours.double(), g_ref, rtol=1e-4, atol=1e-7)


def test_attention_transfer_properties():
    f = torch.rand(2, 4, 5, 5) + 0.1
    assert fl.attention_transfer(f, f).item() == pytest.approx(0.0, abs=1e-12)
    assert fl.attention_transfer(3 * f, f).item() == pytest.approx(0.0, abs=1e-10)  # scale-free
    a, b = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    a[0, 0, 0, 0], b[0, 0, 1, 1] = 1.0, 1.0  # attention on disjoint positions: two orthogonal unit vectors
    assert fl.attention_transfer(a, b).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="spatial"):
        fl.attention_transfer(torch.rand(2, 4, 5, 5), torch.rand(2, 4, 6, 6))


def test_gram_matrix_closed_form_and_permutation_invariance():
    f = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    flat = f.reshape(2, 3, 20)
    ref = torch.stack([flat[n] @ flat[n].T / 20 for n in range(2)])
    assert torch.allclose(fl.gram_matrix(f), ref)
    perm = torch.randperm(20)
    assert torch.allclose(fl.gram_matrix(flat[:, :, perm].reshape(2, 3, 4, 5)), ref)


def test_hint_and_gram_losses_through_adapters():
    torch.manual_seed(0)
    adapters = fl.FeatureAdapters({"blocks.up1": (4, 6)})
    fs, ft = torch.randn(2, 4, 3, 3), torch.randn(2, 6, 3, 3)
    adapted = adapters("blocks.up1", fs)
    assert adapted.shape == (2, 6, 3, 3)
    hint = fl.feature_distillation("hint", {"blocks.up1": fs}, {"blocks.up1": ft}, adapters)
    assert hint.item() == pytest.approx(((adapted - ft) ** 2).mean().item(), rel=1e-6)
    gram = fl.feature_distillation("gram", {"blocks.up1": fs}, {"blocks.up1": ft}, adapters)
    ga = torch.einsum("nchw,ndhw->ncd", adapted, adapted) / 9
    gt = torch.einsum("nchw,ndhw->ncd", ft, ft) / 9
    assert gram.item() == pytest.approx(((ga - gt) ** 2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="needs FeatureAdapters"):
        fl.feature_distillation("hint", {"a": fs}, {"a": ft})
    with pytest.raises(ValueError, match="kind"):
        fl.feature_distillation("fitnet", {"a": fs}, {"a": ft}, adapters)


def test_layer_channels_of_two_generators_and_bad_layers():
    teacher, student = kd.models.Generator(width=8), kd.models.Generator(width=4)
    z = torch.zeros(2, 64)
    student.train()
    bn = student.stem[1].running_mean.clone()
    assert fl.layer_channels(student, teacher, ["stem", "blocks.up1", "blocks.up2"], z) == \
        {"stem": (16, 32), "blocks.up1": (8, 16), "blocks.up2": (4, 8)}
    assert student.training and torch.equal(student.stem[1].running_mean, bn)  # the probe left BatchNorm alone
    with pytest.raises(ValueError, match="spatial"):
        fl.feature_distillation("attention", {"x": torch.rand(2, 4, 7, 7)}, {"x": torch.rand(2, 4, 14, 14)})
    with pytest.raises(ValueError, match="unknown layer"):
        fl.layer_channels(student, teacher, ["blocks.up9"], z)


def test_hint_and_gram_loss_against_float64_formulas():
    g = torch.Generator().manual_seed(2)
    adapted = torch.randn(3, 5, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(3, 5, 4, 6, generator=g, dtype=torch.float64)
    hint = fl.hint_loss(adapted, ft)
    assert hint.dtype == torch.float64
    assert hint.item() == pytest.approx(((adapted - ft) ** 2).sum().item() / adapted.numel(), rel=1e-12)
    flat_s, flat_t = adapted.reshape(3, 5, 24), ft.reshape(3, 5, 24)
    g_s = torch.stack([flat_s[n] @ flat_s[n].T for n in range(3)]) / 24
    g_t = torch.stack([flat_t[n] @ flat_t[n].T for n in range(3)]) / 24
    gram = fl.gram_loss(adapted, ft)
    ref = ((g_s - g_t) ** 2).sum() / g_s.numel()
    assert gram.item() == pytest.approx(ref.item(), rel=1e-12)
    (grad,) = torch.autograd.grad(gram, adapted)
    (ref_grad,) = torch.autograd.grad(ref, adapted)
    assert torch.allclose(grad, ref_grad, rtol=1e-10)
    # the teacher side is detached, and float32 features are compared in float32
    t_grad = ft.clone().requires_grad_(True)
    fl.hint_loss(adapted, t_grad).backward()
    assert t_grad.grad is None
    assert fl.gram_loss(adapted.detach().float(), ft.float()).dtype == torch.float32


def test_check_maps_names_what_differs():
    fl.check_maps(torch.zeros(2, 3, 4, 4), torch.zeros(2, 7, 4, 4), "ok")  # channels may differ
    with pytest.raises(ValueError, match=r"layer 'x': expected feature maps \[N, C, H, W\]"):
        fl.check_maps(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, 4), "layer 'x'")
    with pytest.raises(ValueError, match="batch and spatial sizes must match"):
        fl.check_maps(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4), "layer 'x'")


def test_feature_distillation_uses_the_given_attention_loss_and_means_over_layers():
    g = torch.Generator().manual_seed(3)
    fs = {"a": torch.rand(2, 3, 4, 4, generator=g), "b": torch.rand(2, 3, 2, 2, generator=g)}
    ft = {"a": torch.rand(2, 5, 4, 4, generator=g), "b": torch.rand(2, 6, 2, 2, generator=g)}
    calls = []

    def fake_loss(s, t, p):
        calls.append((s.shape, t.shape, p, t.requires_grad))
        return s.sum() * 0 + len(calls)

    out = fl.feature_distillation("attention", fs, ft, p=3.0, attention_loss=fake_loss)
    assert out.item() == 1.5  # mean of the layers' values 1 and 2
    assert calls == [((2, 3, 4, 4), (2, 5, 4, 4), 3.0, False), ((2, 3, 2, 2), (2, 6, 2, 2), 3.0, False)]
    default = fl.feature_distillation("attention", fs, ft)
    want = sum(_reference_attention(fs[k].double(), ft[k].double()) for k in ("a", "b")) / 2
    assert default.item() == pytest.approx(want.item(), rel=1e-5)
