"""GAN teachers and same-noise distillation (kdlab.methods.gan): each step function against a
straight-line float64 reference written here (the losses spelt out), and the loops around them:
determinism, the joint loss's discriminator, feature terms, recipes and the TeacherCache."""
import copy
import math

import pytest
import torch

import kdlab as kd
from kdlab.engine import step_generator
from kdlab.methods import gan

BETAS = (0.5, 0.999)


def _config(**changes):
    return kd.TrainConfig(**{"device": "cpu", "progress": False, **changes})


def _weights(*modules):
    return [t.clone() for m in modules for t in m.state_dict().values()]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _close(a, b, rtol=1e-9, atol=1e-12):
    """float64 states: equal up to the rounding of a different (but equivalent) formula."""
    return len(a) == len(b) and all(x.shape == y.shape and torch.allclose(x.double(), y.double(), rtol=rtol, atol=atol)
                                    for x, y in zip(a, b))


def _log_sigmoid(x):
    return torch.log(torch.sigmoid(x))  # float64 and logits of a fresh network: no underflow


def _log_one_minus_sigmoid(x):
    return torch.log1p(-torch.sigmoid(x))


def _step(opt, loss):
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.fixture(scope="module")
def images(mnist5k_train):
    return mnist5k_train[0][:256]


@pytest.fixture(scope="module")
def teacher():
    return kd.checkpoints.load(kd.checkpoints.shipped("gan_teacher"))


def _student(seed=0):
    """A width-4 student that takes the shipped teacher's noise (z, then its one-hot class if any)."""
    kd.seed_everything(seed)
    config = kd.checkpoints.metadata(kd.checkpoints.shipped("gan_teacher"))["architecture"]["config"]
    return kd.models.Generator(z_dim=config["z_dim"], width=4, n_classes=config.get("n_classes", 0))


def _pair64(seed=0, width_t=4, width_s=2):
    """A float64 teacher (eval) and student (train) with z_dim 16."""
    torch.manual_seed(seed)
    teacher = kd.models.Generator(z_dim=16, width=width_t).double().eval()
    student = kd.models.Generator(z_dim=16, width=width_s).double()
    return teacher, student


# ---------------------------------------------------------------------------- step functions vs references
def test_gan_step_equals_the_written_out_bce_losses(images):
    torch.manual_seed(0)
    G, D = kd.models.Generator(z_dim=16, width=2).double(), kd.models.Discriminator(width=2).double()
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)
    start = _weights(G, D)
    opts = [torch.optim.Adam(m.parameters(), lr=2e-4, betas=BETAS) for m in (G, D, G_ref, D_ref)]
    g = torch.Generator().manual_seed(1)
    for _ in range(2):  # a second step also compares Adam's moments
        real = images[torch.randint(256, (8,), generator=g)].double()
        z = torch.randn(8, 16, generator=g, dtype=torch.float64)
        out = gan.gan_step(G, D, real, z, opts[0], opts[1])
        # reference: L_D = -mean log s(D(x)) - mean log(1 - s(D(G(z)))), D first; then
        # L_G = -mean log s(D(G(z))) with the updated D (non-saturating)
        fake = G_ref(z)
        d_real, d_fake = D_ref(real), D_ref(fake.detach())
        loss_d = -_log_sigmoid(d_real).mean() - _log_one_minus_sigmoid(d_fake).mean()
        _step(opts[3], loss_d)
        loss_g = -_log_sigmoid(D_ref(fake)).mean()
        _step(opts[2], loss_g)
        assert set(out) == {"loss_d", "loss_g", "d_real", "d_fake"}
        assert out["loss_d"].item() == pytest.approx(loss_d.item(), rel=1e-12)
        assert out["loss_g"].item() == pytest.approx(loss_g.item(), rel=1e-12)
        assert out["d_real"].item() == pytest.approx(torch.sigmoid(d_real).mean().item(), rel=1e-12)
        assert out["d_fake"].item() == pytest.approx(torch.sigmoid(d_fake).mean().item(), rel=1e-12)
        assert _close(_weights(G, D), _weights(G_ref, D_ref))
    assert not _close(start, _weights(G, D))  # the step did move both players


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_distill_step_equals_the_written_out_pixel_loss(kind):
    teacher, student = _pair64()
    ref = copy.deepcopy(student)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3, betas=BETAS)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-3, betas=BETAS)
    g = torch.Generator().manual_seed(2)
    for _ in range(2):
        z = torch.randn(6, 16, generator=g, dtype=torch.float64)
        out = gan.distill_step(student, teacher, z, opt, kind)
        with torch.no_grad():
            target = teacher(z)
        diff = ref(z) - target
        loss = (diff ** 2).mean() if kind == "mse" else diff.abs().mean()
        _step(opt_ref, loss)
        assert set(out) == {"distill", "loss"}
        assert out["loss"].item() == out["distill"].item() == pytest.approx(loss.item(), rel=1e-12)
        assert _close(_weights(student), _weights(ref))
    assert not any(p.grad is not None for p in teacher.parameters())  # the teacher got no gradient


def test_distill_step_joint_equals_the_written_out_loss(images):
    teacher, student = _pair64()
    torch.manual_seed(3)
    D = kd.models.Discriminator(width=2).double()
    ref, D_ref = copy.deepcopy(student), copy.deepcopy(D)
    w = 0.3
    adversary = gan.Adversary(D, weight=w, lr=2e-4)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3, betas=BETAS)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-3, betas=BETAS)
    opt_d_ref = torch.optim.Adam(D_ref.parameters(), lr=2e-4, betas=BETAS)
    g = torch.Generator().manual_seed(4)
    for _ in range(2):
        z = torch.randn(6, 16, generator=g, dtype=torch.float64)
        real = images[torch.randint(256, (6,), generator=g)].double()
        out = gan.distill_step(student, teacher, z, opt, "mse", real, adversary)
        # reference: D learns real vs S(z) first, then L = mean (S - T)^2 + w * (-mean log s(D(S(z))))
        with torch.no_grad():
            target = teacher(z)
        fake = ref(z)
        distill = ((fake - target) ** 2).mean()
        loss_d = -_log_sigmoid(D_ref(real)).mean() - _log_one_minus_sigmoid(D_ref(fake.detach())).mean()
        _step(opt_d_ref, loss_d)
        loss = distill + w * -_log_sigmoid(D_ref(fake)).mean()
        _step(opt_ref, loss)
        assert set(out) == {"distill", "loss", "loss_d"}
        for key, value in (("distill", distill), ("loss_d", loss_d), ("loss", loss)):
            assert out[key].item() == pytest.approx(value.item(), rel=1e-12), key
        assert _close(_weights(student, D), _weights(ref, D_ref))
    with pytest.raises(ValueError, match="adversarial_weight=-0.1"):
        gan.Adversary(D, weight=-0.1, lr=1e-3)


def _hooked(model, layer, store):
    """A forward hook written here (not kdlab.taps) that records ``layer``'s output."""
    return model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.__setitem__(layer, o))


def _attention64(f, p=2.0):
    a = (f.abs() ** p).mean(1).flatten(1)  # (N, H*W)
    return a / a.norm(dim=1, keepdim=True)


def _gram64(f):
    flat = f.flatten(2)  # (N, C, H*W)
    return flat @ flat.transpose(1, 2) / flat.shape[2]


@pytest.mark.parametrize("kind", ["hint", "attention", "gram"])
def test_distill_step_with_a_feature_term_equals_the_written_out_loss(kind):
    teacher, student = _pair64(width_t=4, width_s=2)
    layer, weight = "blocks.up1", 0.7
    torch.manual_seed(5)
    features = gan.FeatureTerm(kind, {layer: (4, 8)}, weight).double()  # up1: 2 * width channels
    ref, ref_features = copy.deepcopy(student), copy.deepcopy(features)
    opt = torch.optim.Adam([*student.parameters(), *features.parameters()], lr=1e-3, betas=BETAS)
    opt_ref = torch.optim.Adam([*ref.parameters(), *ref_features.parameters()], lr=1e-3, betas=BETAS)
    conv = ref_features.adapters.convs[layer.replace(".", "__")]
    g = torch.Generator().manual_seed(6)
    for _ in range(2):
        z = torch.randn(6, 16, generator=g, dtype=torch.float64)
        out = gan.distill_step(student, teacher, z, opt, "mse", features=features)
        fs, ft = {}, {}
        hooks = [_hooked(ref, layer, fs), _hooked(teacher, layer, ft)]
        with torch.no_grad():
            target = teacher(z)
        fake = ref(z)
        for h in hooks:
            h.remove()
        f_s, f_t = fs[layer], ft[layer].detach()
        # the 1x1 adapter r(F_S) written as a channel mix plus bias
        adapted = torch.einsum("nchw,dc->ndhw", f_s, conv.weight[:, :, 0, 0]) + conv.bias[None, :, None, None]
        if kind == "hint":
            feature = ((adapted - f_t) ** 2).mean()
        elif kind == "attention":
            feature = ((_attention64(f_s) - _attention64(f_t)) ** 2).sum(1).mean()
        else:
            feature = ((_gram64(adapted) - _gram64(f_t)) ** 2).mean()
        distill = ((fake - target) ** 2).mean()
        loss = distill + weight * feature
        _step(opt_ref, loss)
        assert set(out) == {"distill", "feature", "loss"}
        for key, value in (("distill", distill), ("feature", feature), ("loss", loss)):
            assert out[key].item() == pytest.approx(value.item(), rel=1e-10), key
        assert _close(_weights(student, features), _weights(ref, ref_features))
    if kind != "attention":  # the adapters train with the student
        assert not _same(_weights(features), _weights(gan.FeatureTerm(kind, {layer: (4, 8)}, weight)))


# ---------------------------------------------------------------------------- the loops
def test_same_noise_distillation_reduces_the_gap_to_the_teacher(teacher):
    student = _student()
    z = teacher.sample_noise(256, torch.Generator().manual_seed(123))  # held-out noise
    with torch.no_grad():
        target = teacher(z)
        before = (student.eval()(z) - target).pow(2).mean().item()
    h = gan.distill(student, teacher, _config(steps=120, batch_size=32, lr=2e-3))
    with torch.no_grad():
        after = (student(z) - target).pow(2).mean().item()
    assert after < 0.5 * before
    assert sum(h["distill"][-10:]) < sum(h["distill"][:10])
    assert all(not p.requires_grad for p in teacher.parameters())  # the teacher stays frozen


def test_distillation_is_deterministic_and_l1_differs(teacher):
    runs = []
    for recipe in ("mse", "mse", "l1"):
        s = _student()
        gan.distill(s, teacher, _config(steps=3, batch_size=8, lr=2e-4), recipe)
        runs.append(_weights(s))
    assert _same(runs[0], runs[1]) and not _same(runs[0], runs[2])


def test_joint_distillation_trains_a_discriminator(teacher, images):
    s, d = _student(), kd.models.Discriminator(width=4)
    d0 = _weights(d)
    h = gan.distill(s, teacher, _config(steps=3, batch_size=8, lr=2e-4), "joint", discriminator=d, real_images=images,
                    adversarial_weight=0.1)
    assert not _same(d0, _weights(d)) and len(h["loss_d"]) == 3
    assert all(t > m for t, m in zip(h["loss"], h["distill"]))  # adversarial term added (it is > 0)


def test_distillation_arguments_are_checked(teacher, images):
    with pytest.raises(ValueError, match=r"z_dim=8, n_classes=0\) differs"):
        gan.distill(kd.models.Generator(z_dim=8, width=2), teacher, _config(steps=1))
    with pytest.raises(ValueError, match="needs a discriminator"):
        gan.distill(_student(), teacher, _config(steps=1), "joint")
    with pytest.raises(ValueError, match="loss='kl'"):
        gan.distill(_student(), teacher, _config(steps=1), "kl")
    with pytest.raises(ValueError, match=r"expects \[N, 1, 28, 28\]"):
        gan.distill(_student(), teacher, _config(steps=1), "joint", discriminator=kd.models.Discriminator(width=1),
                    real_images=images[:, :, :20, :20])


def test_train_gan_moves_both_players(images):
    kd.seed_everything(0)
    g, d = kd.models.Generator(z_dim=8, width=2), kd.models.Discriminator(width=2)
    g0, d0 = _weights(g), _weights(d)
    h = gan.train_gan(g, d, images, _config(steps=3, batch_size=8, lr=2e-4))
    assert set(h) == {"step", "loss_d", "loss_g", "d_real", "d_fake"} and len(h["loss_g"]) == 3
    assert all(0 < p < 1 for p in h["d_real"] + h["d_fake"])
    assert not _same(g0, _weights(g)) and not _same(d0, _weights(d))
    assert not g.training and not d.training  # eval mode after training


def test_parse_recipe_and_errors():
    assert gan.parse_recipe("mse") == ("mse", None)
    assert gan.parse_recipe("joint+gram") == ("joint", "gram")
    for bad, word in (("mse+", "expected"), ("adv", "mse"), ("mse+style", "hint"), ("mse+gram+hint", "expected"),
                      (3, "expected")):
        with pytest.raises(ValueError, match=word):
            gan.parse_recipe(bad)


def test_distill_with_a_recipe_runs_the_parsed_losses():
    """distill(recipe="l1+attention") is distill_step with kind "l1" and an attention term, on the
    noise of the step generators: a loop written here gives the same weights and history."""
    teacher = kd.models.Generator(width=2).eval()
    a, b = kd.models.Generator(width=1), kd.models.Generator(width=1)
    b.load_state_dict(a.state_dict())
    config = _config(steps=3, batch_size=4, seed=1, lr=2e-4)
    ha = gan.distill(a, teacher, config, "l1+attention", layers=["blocks.up2"], feature_weight=2.0)
    features = gan.FeatureTerm("attention", {"blocks.up2": (1, 2)}, weight=2.0)
    opt = torch.optim.Adam([*b.parameters(), *features.parameters()], lr=2e-4, betas=BETAS)
    hb = {"step": [], "distill": [], "feature": [], "loss": []}
    for s in range(3):
        z = torch.randn(4, 64, generator=step_generator(1, s))
        out = gan.distill_step(b, teacher, z, opt, "l1", features=features)
        hb["step"].append(s)
        for k in ("distill", "feature", "loss"):
            hb[k].append(float(out[k]))
    assert ha == hb and "feature" in ha
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


# ---------------------------------------------------------------------------- feature terms in the loop
@pytest.mark.parametrize("kind", ["hint", "attention", "gram"])
def test_distill_with_feature_terms_lowers_them_and_resumes(kind, tmp_path):
    torch.manual_seed(0)
    teacher = kd.models.Generator(width=8).eval()
    make = lambda: (torch.manual_seed(1), kd.models.Generator(width=4))[1]  # noqa: E731
    config = _config(steps=30, batch_size=8, lr=3e-3)
    common = dict(recipe=f"mse+{kind}", layers=["blocks.up1"], feature_weight=1.0)
    h = gan.distill(make(), teacher, config, **common)
    first, last = sum(h["feature"][:5]) / 5, sum(h["feature"][-5:]) / 5
    assert math.isfinite(last) and last < first
    assert all(t >= d for t, d in zip(h["loss"], h["distill"]))  # total = pixel + weight * feature
    # an interrupted-and-resumed run equals an uninterrupted one (adapters are in the training state)
    full = make()
    gan.distill(full, teacher, config.replace(steps=12), **common)
    part = make()
    path = tmp_path / "state.safetensors"
    gan.distill(part, teacher, config.replace(steps=7, state_path=path), **common)
    gan.distill(part, teacher, config.replace(steps=12, state_path=path), **common)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), part.state_dict().values()))


def test_distill_feature_arguments_are_checked():
    t, s = kd.models.Generator(width=8), kd.models.Generator(width=4)
    with pytest.raises(ValueError, match="feature loss='style'"):
        gan.distill(s, t, _config(steps=1), "mse+style", layers=["stem"])
    with pytest.raises(ValueError, match="at least one layer"):
        gan.distill(s, t, _config(steps=1), "mse+hint", layers=[])
    with pytest.raises(ValueError, match="feature_loss='fitnet'"):
        gan.FeatureTerm("fitnet", {"stem": (16, 32)})
    with pytest.raises(ValueError, match="at least one layer"):
        gan.FeatureTerm("hint", {})


# ---------------------------------------------------------------------------- TeacherCache
def test_teacher_cache_returns_the_teachers_images_and_runs_it_once_per_noise():
    torch.manual_seed(0)
    teacher = kd.models.Generator(width=2).eval()
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(5, 64, generator=g), torch.randn(5, 64, generator=g)
    with torch.no_grad():
        want1, want2 = teacher(z1), teacher(z2)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(1))
    cache = gan.TeacherCache(teacher)
    assert cache.z_dim == 64 and len(cache) == 0
    out1 = cache(z1)
    assert torch.equal(out1, want1) and len(calls) == 1
    assert torch.equal(cache(z1.clone()), want1) and len(calls) == 1  # compared by value, not identity
    assert torch.equal(cache(z2), want2) and len(calls) == 2
    assert torch.equal(cache(z1), want1) and torch.equal(cache(z2), want2) and len(calls) == 2
    assert len(cache) == 2 and not out1.requires_grad
    z3 = z1.clone()
    z3[0, 0] += 1e-6  # any change of value is another noise
    cache(z3)
    assert len(calls) == 3 and len(cache) == 3


def test_distillation_with_a_teacher_cache_is_bit_identical_and_runs_the_teacher_once():
    torch.manual_seed(0)
    teacher = kd.models.Generator(width=2)
    config = _config(steps=4, batch_size=8, seed=2, lr=1e-3)
    students = [kd.models.Generator(width=1) for _ in range(3)]
    for s in students[1:]:
        s.load_state_dict(students[0].state_dict())
    h_plain = gan.distill(students[0], teacher, config)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(1))
    cache = gan.TeacherCache(teacher)
    h_cached = gan.distill(students[1], cache, config)
    assert len(calls) == 4 and len(cache) == 4  # one teacher pass per step
    assert h_cached == h_plain and _same(_weights(students[0]), _weights(students[1]))
    gan.distill(students[2], cache, config)  # a second student with the same seed: all hits
    assert len(calls) == 4 and _same(_weights(students[0]), _weights(students[2]))
    with pytest.raises(ValueError, match="TeacherCache holds only the teacher's images"):
        gan.distill(kd.models.Generator(width=1), cache, config, "mse+gram", layers=["blocks.up1"])


def test_feature_term_adapters_follow_the_students_dtype_and_device():
    kd.seed_everything(0)
    student, teacher = kd.models.Generator(width=2).double(), kd.models.Generator(width=4).double()
    term = gan.FeatureTerm.for_models("hint", student, teacher, ["blocks.up1"])
    weight = next(term.parameters())
    assert weight.dtype == torch.float64 and weight.device == next(student.parameters()).device


def test_teacher_cache_accepts_bfloat16_noise_and_tells_dtypes_apart():
    teacher = kd.models.Generator(width=1, stem_channels=2).eval()
    cache = gan.TeacherCache(teacher)
    z = torch.randn(4, teacher.z_dim)
    cache(z)
    cache(z.bfloat16().float())  # other values (rounded): a new entry
    cache(z.clone())  # same values: a hit
    assert len(cache) == 2


# ---------------------------------------------------------------------------- conditional generators
def test_conditional_noise_carries_the_class_and_students_share_it():
    g = kd.models.Generator(z_dim=4, width=2, n_classes=3)
    z = g.sample_noise(6, torch.Generator().manual_seed(0), labels=torch.tensor([0, 1, 2, 2, 1, 0]))
    assert z.shape == (6, 7) and torch.equal(g.labels(z), torch.tensor([0, 1, 2, 2, 1, 0]))
    assert torch.equal(z[:, 4:].sum(1), torch.ones(6))  # one-hot
    drawn = g.sample_noise(300, torch.Generator().manual_seed(1))
    assert set(g.labels(drawn).tolist()) == {0, 1, 2}
    assert g(z).shape == (6, 1, 28, 28)
    student = kd.models.Generator(z_dim=4, width=1, n_classes=3)
    assert student(z).shape == (6, 1, 28, 28)  # the same noise drives the student
    with pytest.raises(ValueError, match="one-hot"):
        g(torch.randn(2, 4))
    with pytest.raises(ValueError, match="unconditional"):
        kd.models.Generator(z_dim=4, width=2).sample_noise(2, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class indices"):
        g.sample_noise(2, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="n_classes"):
        kd.models.Generator(n_classes=-1)


def test_projection_discriminator_adds_the_class_embedding_term():
    torch.manual_seed(0)
    d = kd.models.Discriminator(width=2, n_classes=3)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 0])
    h = d.blocks(x).flatten(1)
    expected = d.head[1](h).squeeze(1) + (d.embed.weight[y] * h).sum(1)  # head(h) + <embed(y), h>
    assert torch.allclose(d(x, y), expected, atol=1e-6)
    with pytest.raises(ValueError, match="pass labels"):
        d(x)
    with pytest.raises(ValueError, match="pass labels"):
        kd.models.Discriminator(width=2)(x, y)


def test_conditional_gan_step_uses_the_classes_in_the_noise(images):
    torch.manual_seed(0)
    g, d = kd.models.Generator(z_dim=4, width=2, n_classes=2), kd.models.Discriminator(width=2, n_classes=2)
    real_labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    z = g.sample_noise(8, torch.Generator().manual_seed(0))
    d_ref = copy.deepcopy(d)
    fake = g(z).detach()
    # L_D written out with the classes: real images with their labels, generated ones with the noise's
    expected = (-_log_sigmoid(d_ref(images[:8], real_labels)).mean()
                - _log_one_minus_sigmoid(d_ref(fake, g.labels(z))).mean()).item()
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=1e-3) for m in (g, d))
    out = gan.gan_step(g, d, images[:8], z, opt_g, opt_d, real_labels)
    assert out["loss_d"].item() == pytest.approx(expected, rel=1e-5)


def test_train_gan_checks_conditional_arguments(images):
    g, d = kd.models.Generator(width=2, n_classes=2), kd.models.Discriminator(width=2, n_classes=2)
    labels = torch.arange(len(images)) % 2
    h = gan.train_gan(g, d, images, _config(steps=2, batch_size=4), labels=labels)
    assert len(h["loss_d"]) == 2
    with pytest.raises(ValueError, match="conditional pair"):
        gan.train_gan(g, d, images, _config(steps=1))
    with pytest.raises(ValueError, match="conditional pair"):
        gan.train_gan(g, kd.models.Discriminator(width=2), images, _config(steps=1), labels=labels)
    with pytest.raises(ValueError, match="one per image"):
        gan.train_gan(g, d, images, _config(steps=1), labels=labels[:3])


def test_diff_augment_equals_a_padded_slice_with_a_square_hole():
    """Reference: pad with -1, take the H x W window offset by (-dy, -dx), zero the cutout square; the
    draws (dy, dx, then the hole's corner) replayed from the same seed."""
    b, h, w, shift, cut = 3, 8, 8, 0.25, 0.5
    x = torch.randn(b, 2, h, w, dtype=torch.float64)
    y = gan.diff_augment(x, torch.Generator().manual_seed(3), shift=shift, cutout=cut)
    g = torch.Generator().manual_seed(3)
    s, side = int(h * shift), int(h * cut)
    dy, dx = torch.randint(-s, s + 1, (b,), generator=g), torch.randint(-s, s + 1, (b,), generator=g)
    cy, cx = torch.randint(0, h - side + 1, (b,), generator=g), torch.randint(0, w - side + 1, (b,), generator=g)
    padded = torch.nn.functional.pad(x, (s, s, s, s), value=-1.0)
    for i in range(b):
        ref = padded[i, :, s - dy[i]:s - dy[i] + h, s - dx[i]:s - dx[i] + w].clone()  # moved by (dy, dx)
        ref[:, cy[i]:cy[i] + side, cx[i]:cx[i] + side] = 0
        assert torch.equal(y[i], ref)
    x.requires_grad_(True)
    gan.diff_augment(x, torch.Generator().manual_seed(3), shift=shift, cutout=cut).sum().backward()
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0} and x.grad.sum() > 0  # the gradient reaches the moved pixels
