"""Diffusion (kdlab.methods.diffusion, kdlab.models.UNet) against closed forms: the schedule's
identities, the v-parameterisation, DDIM on data whose optimal denoiser is known, the
progressive-distillation target, and diffusion_step / progressive_step against straight-line
references with the cosine schedule written out here."""
import copy
import math

import pytest
import torch
from torch import nn

import kdlab as kd
from kdlab.methods import diffusion as dm


def _config(**changes):
    return kd.TrainConfig(**{"device": "cpu", "progress": False, **changes})


def test_cosine_schedule_identities():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    a, s = dm.alpha_sigma(t)
    assert torch.allclose(a ** 2 + s ** 2, torch.ones_like(t), atol=1e-15)  # variance preserving
    assert a[0] == 1 and s[0] == 0 and abs(a[-1]) < 1e-15 and s[-1] == 1
    assert (a[1:] < a[:-1]).all() and (s[1:] > s[:-1]).all()
    inner = t[1:-1]  # signal-to-noise ratio alpha^2 / sigma^2 = 1 / tan^2(pi t / 2)
    assert torch.allclose((a[1:-1] / s[1:-1]) ** 2, 1 / torch.tan(math.pi * inner / 2) ** 2, rtol=1e-12)


def test_v_parameterisation_round_trip():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.01, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    z, v = dm.diffuse(x, t, eps), dm.v_target(x, t, eps)
    x_hat, eps_hat = dm.x_eps_from_v(z, t, v)
    assert torch.allclose(x_hat, x, atol=1e-12) and torch.allclose(eps_hat, eps, atol=1e-12)
    assert torch.allclose(dm.v_from_x(z, t, x), v, atol=1e-12)


class PointMassDenoiser(nn.Module):
    """The optimal v-predictor when the data is one image x0: E[x | z_t] = x0 for every z_t."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, z, t):
        return dm.v_from_x(z, t.to(z.dtype), self.x0.expand_as(z))


class GaussianDenoiser(nn.Module):
    """Data x ~ N(mu, s^2 I): E[x | z_t] = mu + alpha_t s^2 / (alpha_t^2 s^2 + sigma_t^2) (z_t - alpha_t mu)."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, z, t):
        a, sg = [dm.per_image(v, z) for v in dm.alpha_sigma(t.to(z.dtype))]
        x = self.mu + a * self.s ** 2 / (a ** 2 * self.s ** 2 + sg ** 2) * (z - a * self.mu)
        return dm.v_from_x(z, t.to(z.dtype), x)


@pytest.mark.parametrize("steps", [1, 2, 7, 64])
def test_ddim_with_the_optimal_denoiser_of_one_image_recovers_it_exactly(steps):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
    out = dm.sample(PointMassDenoiser(x0), noise, steps, clip=False)
    assert torch.allclose(out, x0.expand_as(out), atol=1e-10)
    # from z_t made with the true noise, a step to any s < t stays on the same noise path:
    # z_s = alpha_s x0 + sigma_s eps (an intermediate step, so a wrong DDIM step cannot pass)
    t, s = torch.full((3,), 0.7, dtype=torch.float64), torch.full((3,), 0.3, dtype=torch.float64)
    z = dm.diffuse(x0.expand(3, -1, -1, -1), t, noise)
    x_hat = dm.predict_x(PointMassDenoiser(x0), z, t, clip=False)
    assert torch.allclose(dm.ddim_step(z, t, s, x_hat), dm.diffuse(x0.expand(3, -1, -1, -1), s, noise), atol=1e-12)
    assert torch.allclose(dm.ddim_step(z, t, torch.zeros_like(t), x_hat), x0.expand_as(z), atol=1e-12)


def test_ddim_on_gaussian_data_converges_to_the_exact_probability_flow():
    """For Gaussian data the probability-flow ODE maps z_1 = u to x = mu + s u exactly; DDIM is its
    discretisation, so its error must shrink as the step count grows (about as 1 / steps)."""
    g = torch.Generator().manual_seed(2)
    mu, s = 0.3, 0.5
    u = torch.randn(2000, 1, 1, 1, generator=g, dtype=torch.float64)
    errors = [(dm.sample(GaussianDenoiser(mu, s), u, n, clip=False) - (mu + s * u)).abs().max().item() for n in (4, 32, 256)]
    # first order: 8x more steps cut the worst error (over u up to about 3.5 sigma) about 8x
    assert errors[0] / errors[1] > 5 and errors[1] / errors[2] > 5 and errors[2] < 0.015, errors
    x = dm.sample(GaussianDenoiser(mu, s), u, 256, clip=False)
    assert abs(x.mean().item() - mu) < 0.03 and abs(x.std().item() - s) < 0.02


@pytest.mark.parametrize("student_steps", [1, 2, 8])
def test_two_step_target_reproduces_the_teachers_two_steps_in_one(student_steps):
    torch.manual_seed(0)
    teacher = kd.models.UNet(widths=(8, 8, 8), emb_dim=16).double().eval()
    for p in teacher.parameters():  # a random teacher with non-trivial outputs
        nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64)
    t = torch.tensor([1.0, 0.9, 0.75, 0.6], dtype=torch.float64).clamp(min=1.0 / student_steps)
    with torch.no_grad():
        x_tilde, z2 = dm.two_step_target(teacher, z, t, student_steps)
        t1, t2 = t - 0.5 / student_steps, t - 1.0 / student_steps  # the teacher's midpoint and end, written out
        z1 = dm.ddim_step(z, t, t1, dm.predict_x(teacher, z, t))
        assert torch.allclose(z2, dm.ddim_step(z1, t1, t2, dm.predict_x(teacher, z1, t1)), atol=1e-12)
    one_step = dm.ddim_step(z, t, t2, x_tilde)
    assert torch.allclose(one_step, z2, atol=1e-10)
    # a student that predicts v_from_x(z, t, x_tilde) takes exactly that step
    v = dm.v_from_x(z, t, x_tilde)
    assert torch.allclose(dm.x_eps_from_v(z, t, v)[0], x_tilde, atol=1e-10)


def test_two_step_target_of_the_point_mass_teacher_is_the_image():
    x0 = torch.full((1, 1, 4, 4), 0.25, dtype=torch.float64)
    z = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([1.0, 0.5], dtype=torch.float64)
    x_tilde, _ = dm.two_step_target(PointMassDenoiser(x0), z, t, 4, clip=False)
    assert torch.allclose(x_tilde, x0.expand_as(z), atol=1e-10)


def test_unet_shapes_determinism_errors_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    a = kd.models.UNet(widths=(8, 16, 16), emb_dim=32)
    torch.manual_seed(0)
    b = kd.models.UNet(widths=(8, 16, 16), emb_dim=32)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0.1, 0.5, 1.0])
    for p in a.parameters():
        nn.init.normal_(p, std=0.05)
    b.load_state_dict(a.state_dict())
    assert a(x, t).shape == (3, 1, 28, 28) and torch.equal(a(x, t), b(x, t))
    assert not torch.allclose(a(x, t), a(x, t.flip(0)))  # the output depends on the time
    assert kd.models.UNet(img_size=32, widths=(8, 8, 8))(torch.randn(2, 1, 32, 32), torch.rand(2)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"t \[N\]"):
        a(x, torch.rand(2))
    with pytest.raises(ValueError, match="widths"):
        kd.models.UNet(widths=(8, 8))
    with pytest.raises(ValueError, match="multiple of 8"):
        kd.models.UNet(widths=(12, 16, 16))
    with pytest.raises(ValueError, match="even"):
        kd.models.UNet(emb_dim=33)
    path = kd.checkpoints.save(a, tmp_path / "unet.safetensors", dataset="none")
    assert torch.equal(kd.checkpoints.load(path)(x, t), a(x, t))


def test_train_diffusion_is_deterministic_and_distill_round_leaves_the_teacher(tmp_path):
    images = kd.data.as_tensors(kd.data.load("mnist5k", "test"))[0][:64]
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = kd.models.UNet(widths=(8, 8, 8), emb_dim=16)
        ema, history = dm.train_diffusion(model, images, _config(steps=6, batch_size=8, seed=1))
        runs.append((ema, history))
    assert runs[0][1] == runs[1][1] and all(math.isfinite(v) for v in runs[0][1]["loss"])
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(p, q)
    teacher = runs[0][0]
    assert all(not p.requires_grad for p in teacher.parameters())  # the EMA copy is frozen
    before = [p.clone() for p in teacher.parameters()]
    student = copy.deepcopy(teacher)  # as in notebook 06: a copy of a frozen teacher must still train
    history = dm.distill_round(student, teacher, images, _config(steps=3, batch_size=8, lr=1e-4), student_steps=2)
    assert len(history["loss"]) == 3
    assert all(torch.equal(p, q) for p, q in zip(before, teacher.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(before, student.parameters()))


# ---------------------------------------------------------------------------- step functions vs references
def _schedule64(t):
    """Cosine schedule written out, broadcast over images: (cos(pi t / 2), sin(pi t / 2)) [N, 1, 1, 1]."""
    return torch.cos(math.pi * t / 2).view(-1, 1, 1, 1), torch.sin(math.pi * t / 2).view(-1, 1, 1, 1)


def _random_unet(seed):
    torch.manual_seed(seed)
    model = kd.models.UNet(widths=(8, 8, 8), emb_dim=16).double()
    for p in model.parameters():  # non-trivial outputs (the head starts at zero otherwise)
        nn.init.normal_(p, std=0.1)
    return model


def _step(opt, loss):
    opt.zero_grad()
    loss.backward()
    opt.step()


def _close(a, b):
    return all(torch.allclose(x, y, rtol=1e-9, atol=1e-12) for x, y in zip(a.parameters(), b.parameters()))


def test_diffusion_step_equals_the_written_out_v_loss():
    model = _random_unet(0)
    ref = copy.deepcopy(model)
    opt, opt_ref = torch.optim.Adam(model.parameters(), lr=1e-3), torch.optim.Adam(ref.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.rand(3, 1, 28, 28, generator=g, dtype=torch.float64) * 2 - 1
        t = torch.rand(3, generator=g, dtype=torch.float64)
        eps = torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64)
        out = dm.diffusion_step(model, x, t, eps, opt)
        a, s = _schedule64(t)
        z, v = a * x + s * eps, a * eps - s * x  # z_t and the v target
        loss = ((ref(z, t) - v) ** 2).mean()
        _step(opt_ref, loss)
        assert set(out) == {"loss"} and out["loss"].item() == pytest.approx(loss.item(), rel=1e-12)
        assert _close(model, ref)


@pytest.mark.parametrize("student_steps", [1, 2, 4])
def test_progressive_step_equals_two_written_out_teacher_steps(student_steps):
    teacher = _random_unet(2).eval()
    student = _random_unet(3)
    ref = copy.deepcopy(student)
    opt, opt_ref = torch.optim.Adam(student.parameters(), lr=1e-3), torch.optim.Adam(ref.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(4)

    def x_hat(model, z, t):  # the teacher's clipped prediction x = alpha z - sigma v
        a, s = _schedule64(t)
        return (a * z - s * model(z, t)).clamp(-1, 1)

    def ddim(z, t, t_next, x):  # z_s = alpha_s x + sigma_s (z_t - alpha_t x) / sigma_t
        (a, s), (a_n, s_n) = _schedule64(t), _schedule64(t_next)
        return a_n * x + s_n * (z - a * x) / s

    for _ in range(2):
        x = torch.rand(4, 1, 28, 28, generator=g, dtype=torch.float64) * 2 - 1
        i = torch.randint(1, student_steps + 1, (4,), generator=g)
        t = i.double() / student_steps  # the student's grid
        eps = torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64)
        out = dm.progressive_step(student, teacher, x, t, eps, opt, student_steps)
        a, s = _schedule64(t)
        z = a * x + s * eps
        t1, t2 = t - 0.5 / student_steps, t - 1.0 / student_steps
        with torch.no_grad():
            z1 = ddim(z, t, t1, x_hat(teacher, z, t))
            z2 = ddim(z1, t1, t2, x_hat(teacher, z1, t1))
        a2, s2 = _schedule64(t2)
        # the one-step prediction that lands on z2: z2 = a2 x + s2 (z - a x) / s, solved for x
        x_tilde = (z2 - s2 / s * z) / (a2 - s2 / s * a)
        v_tilde = a * (z - a * x_tilde) / s - s * x_tilde  # v = alpha eps - sigma x with eps from x_tilde
        loss = ((ref(z, t) - v_tilde) ** 2).mean()
        _step(opt_ref, loss)
        assert set(out) == {"loss"} and out["loss"].item() == pytest.approx(loss.item(), rel=1e-10)
        assert _close(student, ref)
    assert all(p.grad is None for p in teacher.parameters())
