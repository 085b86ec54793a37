"""Feature distillation losses (kdlab.feature_losses) against float64 formulas written here, and
the feature terms of kd.train.distill_gan."""
import math

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


@pytest.mark.parametrize("kind", ["hint", "attention", "gram"])
def test_distill_gan_with_feature_terms_lowers_them_and_resumes(kind, tmp_path):
    torch.manual_seed(0)
    teacher = kd.models.Generator(width=8).eval()
    make = lambda: (torch.manual_seed(1), kd.models.Generator(width=4))[1]
    common = dict(steps=30, batch_size=8, lr=3e-3, feature_loss=kind, layers=["blocks.up1"], feature_weight=1.0,
                  device="cpu", progress=False)
    h = kd.train.distill_gan(make(), teacher, **common)
    first, last = sum(h["feature"][:5]) / 5, sum(h["feature"][-5:]) / 5
    assert math.isfinite(last) and last < first
    assert all(t >= d for t, d in zip(h["loss"], h["distill"]))  # total = pixel + weight * feature
    # an interrupted-and-resumed run equals an uninterrupted one (adapters are in the training state)
    full = make()
    kd.train.distill_gan(full, teacher, **{**common, "steps": 12})
    part = make()
    path = tmp_path / "state.safetensors"
    kd.train.distill_gan(part, teacher, **{**common, "steps": 7}, state_path=path)
    kd.train.distill_gan(part, teacher, **{**common, "steps": 12}, state_path=path)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), part.state_dict().values()))


def test_distill_gan_feature_arguments_are_checked():
    t, s = kd.models.Generator(width=8), kd.models.Generator(width=4)
    with pytest.raises(ValueError, match="feature_loss"):
        kd.train.distill_gan(s, t, steps=1, feature_loss="style", layers=["stem"], device="cpu", progress=False)
    with pytest.raises(ValueError, match="at least one layer"):
        kd.train.distill_gan(s, t, steps=1, feature_loss="hint", layers=[], device="cpu", progress=False)
