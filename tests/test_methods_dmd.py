"""Distribution-matching distillation (kdlab.methods.dmd) on one-dimensional Gaussians, where every
score is known in closed form: the matching gradient is the gradient of the KL between the diffused
generator and data distributions (closed form vs autograd vs Monte Carlo), and it vanishes when the
generator matches the data."""
import math

import pytest
import torch
from torch import nn

from kdlab.methods import diffusion as dm
from kdlab.methods import dmd


class GaussianV(nn.Module):
    """The exact v-prediction of data N(m, s^2): x_hat = E[x | z_t] = m + alpha s^2 (z - alpha m) / (alpha^2 s^2 + sigma^2),
    v = (alpha z - x_hat) / sigma."""

    def __init__(self, m: float, s: float):
        super().__init__()
        self.m, self.s = torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)

    def forward(self, z, t):
        a, sg = (v.view(-1, 1, 1, 1) for v in dm.alpha_sigma(t))
        x_hat = self.m + a * self.s ** 2 * (z - a * self.m) / (a ** 2 * self.s ** 2 + sg ** 2)
        return (a * z - x_hat) / sg


def _kl(mu_g, s_g, m, s, t):
    """KL(N(a mu_g, a^2 s_g^2 + sig^2) || N(a m, a^2 s^2 + sig^2)), the diffused generator against the diffused data."""
    a, sig = math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)
    va, vb = a ** 2 * s_g ** 2 + sig ** 2, a ** 2 * s ** 2 + sig ** 2
    return 0.5 * (torch.log(vb / va) + (va + (a * mu_g - a * m) ** 2) / vb - 1)


def test_score_of_a_v_network_is_the_gaussian_score():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    z = torch.tensor([-1.3, 0.2, 2.0], dtype=torch.float64).view(3, 1, 1, 1)
    got = dmd.score(GaussianV(0.4, 0.7), z, t)
    for i in range(3):
        a, s = math.cos(math.pi * t[i] / 2), math.sin(math.pi * t[i] / 2)
        want = -(z[i] - a * 0.4) / (a ** 2 * 0.49 + s ** 2)  # grad log N(a m, a^2 s^2 + sigma^2)
        assert torch.allclose(got[i], want, rtol=1e-12)


def test_matching_gradient_is_the_kl_gradient_closed_form_autograd_and_monte_carlo():
    m, s, t = 0.3, 0.5, 0.4  # data N(m, s^2); one diffusion time
    mu_g = torch.tensor(-0.2, dtype=torch.float64, requires_grad=True)
    s_g = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    a, sig = math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)
    va, vb = a ** 2 * s_g.item() ** 2 + sig ** 2, a ** 2 * s ** 2 + sig ** 2
    closed_mu = a * (a * mu_g.item() - a * m) / vb  # dKL/dmu_g written out
    closed_s = a ** 2 * s_g.item() * (1 / vb - 1 / va)  # dKL/ds_g written out
    auto = torch.autograd.grad(_kl(mu_g, s_g, m, s, t), [mu_g, s_g])
    assert math.isclose(auto[0].item(), closed_mu, rel_tol=1e-12) and math.isclose(auto[1].item(), closed_s, rel_tol=1e-12)
    # Monte Carlo: x = mu_g + s_g e0 from the generator, the matching gradient at x, chained to (mu_g, s_g)
    n = 400_000
    g = torch.Generator().manual_seed(0)
    e0, eps = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64), torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    x = mu_g + s_g * e0
    grad_x = dmd.matching_gradient(GaussianV(m, s), GaussianV(mu_g.item(), s_g.item()), x.detach(),
                                   torch.full((n,), t, dtype=torch.float64), eps, normalise=False)
    mc = torch.autograd.grad((grad_x * x).sum() / n, [mu_g, s_g])
    per_sample_mu, per_sample_s = grad_x.flatten(), (grad_x * e0).flatten()
    for est, ref, per in ((mc[0], closed_mu, per_sample_mu), (mc[1], closed_s, per_sample_s)):
        se = per.std().item() / math.sqrt(n)
        assert abs(est.item() - ref) < 4 * se, (est.item(), ref, se)


def test_matching_gradient_vanishes_when_the_generator_matches_the_data():
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    x, eps = torch.randn(64, 1, 1, 1, dtype=torch.float64), torch.randn(64, 1, 1, 1, dtype=torch.float64)
    for normalise in (False, True):
        g = dmd.matching_gradient(GaussianV(0.3, 0.5), GaussianV(0.3, 0.5), x, t, eps, normalise=normalise)
        assert torch.equal(g, torch.zeros_like(g))


def test_the_normalised_gradient_points_the_same_way():
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    x, eps = torch.randn(2, 1, 3, 3, dtype=torch.float64), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    raw = dmd.matching_gradient(GaussianV(0.3, 0.5), GaussianV(-0.1, 0.9), x, t, eps, normalise=False)
    unit = dmd.matching_gradient(GaussianV(0.3, 0.5), GaussianV(-0.1, 0.9), x, t, eps)
    for i in range(2):  # a positive multiple per image
        ratio = raw[i] / unit[i]
        assert torch.all(ratio > 0) and torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-10)
    for i in range(2):  # and exactly (x_hat_fake - x_hat_real) / mean |x - x_hat_real| of its own image, in closed form
        a, s = math.cos(math.pi * t[i] / 2), math.sin(math.pi * t[i] / 2)
        z = a * x[i] + s * eps[i]
        post = lambda m, sd: m + a * sd ** 2 * (z - a * m) / (a ** 2 * sd ** 2 + s ** 2)  # E[x | z_t], Gaussian data
        x_real, x_fake = post(0.3, 0.5), post(-0.1, 0.9)
        assert torch.allclose(unit[i], (x_fake - x_real) / (x[i] - x_real).abs().mean(), rtol=1e-10)


def test_generator_step_moves_the_images_along_the_matching_gradient():
    torch.manual_seed(0)
    from kdlab.models import UNet
    gen = UNet(widths=(4, 8, 8), emb_dim=8).double()
    for p in gen.parameters():
        nn.init.normal_(p, std=0.1)
    noise = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    t, eps = torch.tensor([0.3, 0.6], dtype=torch.float64), torch.randn(2, 1, 28, 28, dtype=torch.float64)
    real, fake = GaussianV(0.0, 0.5), GaussianV(0.2, 0.6)
    x0 = dmd.generate(gen, noise).detach()
    g = dmd.matching_gradient(real, fake, x0, t, eps)
    ref = [p.detach().clone() for p in gen.parameters()]
    opt = torch.optim.SGD(gen.parameters(), lr=0.5)
    dmd.generator_step(gen, real, fake, noise, t, eps, opt)
    # SGD on the surrogate = SGD on <g, x> / numel: the same parameter change as backpropagating g
    gen2 = UNet(widths=(4, 8, 8), emb_dim=8).double()
    for p, q in zip(gen2.parameters(), ref):
        p.data.copy_(q)
    (dmd.generate(gen2, noise) * g).sum().div(g.numel()).backward()
    for p, q, r in zip(gen.parameters(), gen2.parameters(), ref):
        assert torch.allclose(p, r - 0.5 * q.grad, rtol=1e-10, atol=1e-13)


def test_distill_dmd_leaves_the_teacher_is_deterministic_and_resumes(tmp_path):
    import copy

    import pytest

    import kdlab as kd

    torch.manual_seed(0)
    teacher = kd.models.UNet(widths=(4, 8, 8), emb_dim=8)
    before = [p.detach().clone() for p in teacher.parameters()]
    reg = dict(pairs=dmd.regression_pairs(teacher, 5, torch.Generator().manual_seed(3), steps=2), reg_weight=0.5)
    cfg = dict(batch_size=3, seed=2, lr=1e-3, device="cpu", progress=False)
    runs = []
    for _ in range(2):
        gen, fake = copy.deepcopy(teacher), copy.deepcopy(teacher)
        runs.append((gen, dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=3, **cfg), fake_updates=2, **reg)))
    (g1, h1), (g2, h2) = runs
    assert h1 == h2 and len(h1["loss"]) == 3 and all(math.isfinite(v) for v in h1["fake_loss"])
    assert all(v > 0 for v in h1["regression"])
    assert all(torch.equal(p, q) for p, q in zip(g1.parameters(), g2.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(g1.parameters(), before))
    assert all(torch.equal(p, q) for p, q in zip(teacher.parameters(), before))
    state = tmp_path / "state.safetensors"
    gen, fake = copy.deepcopy(teacher), copy.deepcopy(teacher)
    dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=2, state_path=state, **cfg), fake_updates=2, **reg)
    assert dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=3, state_path=state, **cfg), fake_updates=2, **reg) == h1
    assert all(torch.equal(p, q) for p, q in zip(gen.parameters(), g1.parameters()))
    with pytest.raises(ValueError, match="three separate"):
        dmd.distill_dmd(teacher, fake, teacher, kd.TrainConfig(steps=1, **cfg))
    with pytest.raises(ValueError, match="fake_lr"):
        dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=1, **cfg), fake_lr=0.0)
    with pytest.raises(ValueError, match="t_range"):
        dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=1, **cfg), t_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="needs pairs"):
        dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=1, **cfg), reg_weight=1.0)
    for bad in ((reg["pairs"][0], reg["pairs"][1][:2]), torch.stack(reg["pairs"]), (reg["pairs"][0][:0],) * 2,
                (reg["pairs"][0].numpy(), reg["pairs"][1]), (reg["pairs"][0][..., :14, :14],) * 2):
        with pytest.raises(ValueError, match="pairs must be"):
            dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=1, **cfg), pairs=bad)
    for bad in (True, "0.5", None, float("nan")):
        with pytest.raises(ValueError, match="reg_weight="):
            dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=1, **cfg), reg_weight=bad)


def test_regression_term_adds_the_gradient_of_the_squared_error_to_the_teachers_images():
    """generator_step with pair = (z_ref, x_ref): the parameter change is SGD on <g, x> / numel plus
    reg_weight * mean (G(z_ref) - x_ref)^2, each gradient computed separately by autograd."""
    from kdlab.models import UNet
    torch.manual_seed(1)
    gen = UNet(widths=(4, 8, 8), emb_dim=8).double()
    noise, z_ref = torch.randn(2, 1, 28, 28, dtype=torch.float64), torch.randn(3, 1, 28, 28, dtype=torch.float64)
    x_ref = torch.rand(3, 1, 28, 28, dtype=torch.float64) * 2 - 1
    t, eps = torch.tensor([0.3, 0.6], dtype=torch.float64), torch.randn(2, 1, 28, 28, dtype=torch.float64)
    real, fake = GaussianV(0.0, 0.5), GaussianV(0.2, 0.6)
    ref = [p.detach().clone() for p in gen.parameters()]
    g = dmd.matching_gradient(real, fake, dmd.generate(gen, noise).detach(), t, eps)
    grads_dmd = torch.autograd.grad((dmd.generate(gen, noise) * g).sum() / g.numel(), list(gen.parameters()))
    mse = lambda: ((dmd.generate(gen, z_ref) - x_ref) ** 2).sum() / x_ref.numel()
    grads_reg = torch.autograd.grad(mse(), list(gen.parameters()))
    out = dmd.generator_step(gen, real, fake, noise, t, eps, torch.optim.SGD(gen.parameters(), lr=0.5),
                             pair=(z_ref, x_ref), reg_weight=0.25)
    for p, r, a, b in zip(gen.parameters(), ref, grads_dmd, grads_reg):
        assert torch.allclose(p, r - 0.5 * (a + 0.25 * b), rtol=1e-10, atol=1e-13)
    assert out["regression"] > 0


def _small_unet(seed: int):
    from kdlab.models import UNet
    torch.manual_seed(seed)
    net = UNet(widths=(4, 8, 8), emb_dim=8).double()
    for p in net.parameters():
        nn.init.normal_(p, std=0.1)
    return net


def test_multistep_sample_and_backward_simulation_written_out():
    """DMD2's sampler: x = G(z, 1), re-noise to t with fresh noise, x = G(z_t, t); the simulated input at
    times[k] is the k-step sample re-noised to times[k]. Written out with cos/sin and the network's v."""
    gen = _small_unet(0)
    noise = torch.randn(2, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def x_of(z, t):  # x_hat = alpha z - sigma v, per image
        a, s = math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)
        return a * z - s * gen(z, torch.full((2,), t, dtype=torch.float64))

    def renoise(x, t, eps):
        return math.cos(math.pi * t / 2) * x + math.sin(math.pi * t / 2) * eps

    with torch.no_grad():
        x1 = x_of(noise, 1.0).clamp(-1, 1)
        g = torch.Generator().manual_seed(5)
        e1, e2 = (torch.randn(noise.shape, generator=g).double() for _ in range(2))  # float32 draws, as the sampler makes
        x2 = x_of(renoise(x1, 0.5, e1), 0.5).clamp(-1, 1)
        x3 = x_of(renoise(x2, 0.25, e2), 0.25).clamp(-1, 1)
        assert torch.allclose(dmd.multistep_sample(gen, noise, [1.0]), x1, rtol=0, atol=1e-12)
        assert torch.allclose(dmd.multistep_sample(gen, noise, [1.0, 0.5, 0.25], g=torch.Generator().manual_seed(5)), x3,
                              rtol=0, atol=1e-12)
        times = [1.0, 0.5, 0.25]
        assert torch.equal(dmd.simulated_input(gen, noise, times, 0, torch.Generator().manual_seed(5)), noise)
        z2 = dmd.simulated_input(gen, noise, times, 2, torch.Generator().manual_seed(5))  # draws e1, then its re-noising
        g = torch.Generator().manual_seed(5)
        _, e_again = (torch.randn(noise.shape, generator=g).double() for _ in range(2))
        assert torch.allclose(z2, renoise(x2, 0.25, e_again), rtol=0, atol=1e-12)
    for bad in ([0.5], [1.0, 1.0], [1.0, 0.5, 0.6], [1.0, 0.0], []):
        with pytest.raises(ValueError, match="sampling_times="):
            dmd.multistep_sample(gen, noise, bad)
    with pytest.raises(ValueError, match="k=3"):
        dmd.simulated_input(gen, noise, times, 3, torch.Generator())


def test_generator_step_at_a_later_time_backpropagates_through_g_at_that_time():
    gen = _small_unet(2)
    z_t = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    t, eps = torch.tensor([0.3, 0.6], dtype=torch.float64), torch.randn(2, 1, 28, 28, dtype=torch.float64)
    real, fake = GaussianV(0.0, 0.5), GaussianV(0.2, 0.6)
    ref = [p.detach().clone() for p in gen.parameters()]
    x = dmd.generate(gen, z_t, 0.5)  # x_hat_G(z_t, 0.5)
    g = dmd.matching_gradient(real, fake, x.detach(), t, eps)
    grads = torch.autograd.grad((x * g).sum() / g.numel(), list(gen.parameters()))
    dmd.generator_step(gen, real, fake, z_t, t, eps, torch.optim.SGD(gen.parameters(), lr=0.5), t_gen=0.5)
    for p, r, d in zip(gen.parameters(), ref, grads):
        assert torch.allclose(p, r - 0.5 * d, rtol=1e-10, atol=1e-13)


def test_distill_dmd_multistep_is_deterministic_resumes_and_leaves_the_teacher(tmp_path):
    import copy

    import kdlab as kd

    torch.manual_seed(0)
    teacher = kd.models.UNet(widths=(4, 8, 8), emb_dim=8)
    before = [p.detach().clone() for p in teacher.parameters()]
    cfg = dict(batch_size=2, seed=4, lr=1e-3, device="cpu", progress=False)
    kw = dict(fake_updates=1, sampling_times=(1.0, 0.5, 0.25))
    runs = []
    for _ in range(2):
        gen, fake = copy.deepcopy(teacher), copy.deepcopy(teacher)
        runs.append((gen, dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=4, **cfg), **kw)))
    (g1, h1), (g2, h2) = runs
    assert h1 == h2 and all(torch.equal(p, q) for p, q in zip(g1.parameters(), g2.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(teacher.parameters(), before))
    state = tmp_path / "state.safetensors"
    gen, fake = copy.deepcopy(teacher), copy.deepcopy(teacher)
    dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=2, state_path=state, **cfg), **kw)
    assert dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=4, state_path=state, **cfg), **kw) == h1
    # a different schedule trains a different generator from the same seed
    gen3, fake3 = copy.deepcopy(teacher), copy.deepcopy(teacher)
    dmd.distill_dmd(gen3, fake3, teacher, kd.TrainConfig(steps=4, **cfg), fake_updates=1)
    assert any(not torch.equal(p, q) for p, q in zip(gen3.parameters(), g1.parameters()))
    with pytest.raises(ValueError, match="sampling_times="):
        dmd.distill_dmd(gen, fake, teacher, kd.TrainConfig(steps=1, **cfg), sampling_times=(0.5,))
