"""Consistency distillation (kdlab.methods.consistency) against independent references: the
parameterisation's closed form and exact boundary condition, the target as one teacher DDIM step
written out in float64, the EMA target update, multistep sampling, determinism and resume."""
import copy
import math

import pytest
import torch
from torch import nn

import kdlab as kd
from kdlab.methods import consistency as cm


class LinearV(nn.Module):
    """A v-prediction "network" with a closed form: v(z, t) = a z + b t."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a, dtype=torch.float64)), nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, z, t):
        return self.a * z + self.b * t.view(-1, 1, 1, 1)


def _c_skip(t, t_min=cm.T_MIN, sd=0.5, k=10.0):
    """c_skip on the VE-equivalent noise level tan(pi t / 2), scaled by k, written with math (float64)."""
    s, s_min = math.tan(math.pi * t / 2), math.tan(math.pi * t_min / 2)
    return sd ** 2 / ((k * (s - s_min)) ** 2 + sd ** 2)


def test_skip_and_out_match_the_closed_form_and_the_boundary_exactly():
    ts = [cm.T_MIN, 0.01, 0.1, 0.3, 0.5, 0.8, 0.99]
    c_skip, c_out = cm.skip_out(torch.tensor(ts, dtype=torch.float64))
    for t, cs in zip(ts, c_skip.tolist()):
        assert math.isclose(cs, _c_skip(t), rel_tol=1e-9, abs_tol=1e-15)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0  # exactly, not approximately
    assert torch.all(c_skip[1:] < c_skip[:-1])  # the skip weight falls as noise grows
    assert torch.equal(c_skip + c_out, torch.ones_like(c_skip))
    at_one = cm.skip_out(torch.ones(1, dtype=torch.float64))[0].item()
    assert 0 <= at_one < 1e-20  # alpha_1 = 0: pure noise, nothing to skip
    assert cm.skip_out(torch.tensor([0.2], dtype=torch.float64))[0].item() < 0.025  # f is the denoiser from t = 0.2 on
    for dtype in (torch.float32, torch.float64):  # the boundary holds in both precisions
        c, o = cm.skip_out(torch.full((2,), cm.T_MIN, dtype=dtype))
        assert torch.all(c == 1) and torch.all(o == 0)


def test_the_consistency_function_is_the_identity_at_t_min_and_the_closed_form_elsewhere():
    torch.manual_seed(0)
    unet = kd.models.UNet(widths=(4, 8, 8), emb_dim=8).double()
    for p in unet.parameters():
        nn.init.normal_(p, std=0.2)
    z = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    assert torch.equal(cm.consistency_function(unet, z, torch.full((3,), cm.T_MIN, dtype=torch.float64)), z)
    model, t = LinearV(0.3, -0.2), torch.tensor([0.2, 0.6, 0.9], dtype=torch.float64)
    with torch.no_grad():
        out = cm.consistency_function(model, z, t)
    for i, ti in enumerate(t.tolist()):
        a, s = math.cos(math.pi * ti / 2), math.sin(math.pi * ti / 2)
        x_hat = a * z[i] - s * (0.3 * z[i] - 0.2 * ti)  # F = alpha z - sigma v
        want = _c_skip(ti) * z[i] + (1 - _c_skip(ti)) * x_hat
        assert torch.allclose(out[i], want, rtol=1e-12, atol=1e-12)


def test_the_target_is_one_teacher_ddim_step_then_the_target_network():
    teacher, target = LinearV(0.1, 0.05), LinearV(0.4, 0.0)
    g = torch.Generator().manual_seed(1)
    z = 0.3 * torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64)  # x_hat stays inside [-1, 1]: no clipping
    t, t_prev = torch.tensor([0.7, 0.4], dtype=torch.float64), torch.tensor([0.6, 0.3], dtype=torch.float64)
    y, z_prev = cm.consistency_target(teacher, target, z, t, t_prev)
    for i in range(2):
        a, s = math.cos(math.pi * t[i] / 2), math.sin(math.pi * t[i] / 2)
        a2, s2 = math.cos(math.pi * t_prev[i] / 2), math.sin(math.pi * t_prev[i] / 2)
        v = 0.1 * z[i] + 0.05 * t[i]
        x_hat, eps_hat = a * z[i] - s * v, s * z[i] + a * v  # the v-parameterisation, inverted
        want = a2 * x_hat + s2 * eps_hat  # DDIM: z_s = alpha_s x_hat + sigma_s eps_hat
        assert torch.allclose(z_prev[i], want, rtol=1e-12, atol=1e-13)
        x_hat2 = a2 * want - s2 * (0.4 * want)
        assert torch.allclose(y[i], _c_skip(t_prev[i].item()) * want + (1 - _c_skip(t_prev[i].item())) * x_hat2,
                              rtol=1e-12, atol=1e-13)


def test_the_step_regresses_the_student_on_the_target_and_leaves_teacher_and_target():
    teacher, target, student = LinearV(0.1, 0.05), LinearV(0.4, 0.0), LinearV(0.4, 0.0)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) - 0.5
    eps = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    t, t_prev = torch.full((4,), 0.5, dtype=torch.float64), torch.full((4,), 0.45, dtype=torch.float64)
    before = [copy.deepcopy(m.state_dict()) for m in (teacher, target)]
    ref = copy.deepcopy(student)
    out = cm.consistency_step(student, target, teacher, x, eps, t, t_prev, torch.optim.SGD(student.parameters(), lr=0.1))
    assert all(m.state_dict()[k].equal(b[k]) for m, b in zip((teacher, target), before) for k in b)
    assert all(p.grad is None for m in (teacher, target) for p in m.parameters())  # no gradient leaks into them
    z = kd.methods.diffusion.diffuse(x, t, eps)
    with torch.no_grad():
        y, _ = cm.consistency_target(teacher, target, z, t, t_prev)
    loss = (cm.consistency_function(ref, z, t) - y).pow(2).mean()
    loss.backward()
    assert math.isclose(out["loss"].item(), loss.item(), rel_tol=1e-12)
    for p, q in zip(student.parameters(), ref.parameters()):
        assert torch.allclose(p, q - 0.1 * q.grad, rtol=1e-12, atol=1e-14)


def test_one_step_sampling_is_f_at_t_one_and_bad_schedules_are_refused():
    model = LinearV(0.2, 0.1)
    noise = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    one = cm.sample(model, noise, [1.0])
    with torch.no_grad():
        want = cm.consistency_function(model, noise, torch.ones(2, dtype=torch.float64)).clamp(-1, 1)
    assert torch.equal(one, want)
    a = cm.sample(model, noise, [1.0, 0.5, 0.2], torch.Generator().manual_seed(3))
    b = cm.sample(model, noise, [1.0, 0.5, 0.2], torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.abs().max() <= 1
    # two steps written out: x = f(noise, 1); z = alpha x + sigma eps (VP re-noising); x = f(z, 0.5)
    g = torch.Generator().manual_seed(4)
    two = cm.sample(model, noise, [1.0, 0.5], g)
    eps = torch.randn(noise.shape, generator=torch.Generator().manual_seed(4)).double()  # drawn in float32, as sample does
    x1 = want  # f(noise, 1), clipped
    a5, s5 = math.cos(math.pi / 4), math.sin(math.pi / 4)
    z = a5 * x1 + s5 * eps
    x_hat = a5 * z - s5 * (0.2 * z + 0.1 * 0.5)  # F = alpha z - sigma v with v = 0.2 z + 0.1 t
    assert torch.allclose(two, (_c_skip(0.5) * z + (1 - _c_skip(0.5)) * x_hat).clamp(-1, 1), rtol=1e-12, atol=1e-12)
    for bad in ([0.5], [1.0, 1.0], [1.0, 0.0], []):
        with pytest.raises(ValueError, match="times"):
            cm.sample(model, noise, bad)
    with pytest.raises(ValueError, match="n="):
        cm.time_grid(1)


def _config(**kw):
    return kd.TrainConfig(**{"device": "cpu", "progress": False, "lr": 1e-3, **kw})


def test_distill_consistency_averages_the_target_is_deterministic_and_resumes(tmp_path):
    images = kd.data.as_tensors(kd.data.load("mnist5k", "test"))[0][:32]
    torch.manual_seed(0)
    teacher = kd.models.UNet(widths=(4, 8, 8), emb_dim=8)
    start = copy.deepcopy(teacher)
    student = copy.deepcopy(teacher)  # one step with mu = 0.5: the target is halfway from the start to the student
    target, _ = cm.distill_consistency(student, teacher, images, _config(steps=1, batch_size=4, seed=1),
                                       n_grid=6, target_decay=0.5)
    for p, q, r in zip(target.parameters(), start.parameters(), student.parameters()):
        assert torch.allclose(p, 0.5 * q + 0.5 * r, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(p, q) for p, q in zip(target.parameters(), start.parameters()))
    runs = []
    for _ in range(2):
        student = copy.deepcopy(teacher)
        target, history = cm.distill_consistency(student, teacher, images, _config(steps=4, batch_size=4, seed=1),
                                                 n_grid=6, target_decay=0.5)
        runs.append((student, target, history))
    (s1, t1, h1), (s2, t2, h2) = runs
    assert h1 == h2 and len(h1["loss"]) == 4 and all(math.isfinite(v) for v in h1["loss"])
    assert all(torch.equal(p, q) for p, q in zip(t1.parameters(), t2.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(t1.parameters(), s1.parameters()))
    with pytest.raises(ValueError, match="separate copy"):
        cm.distill_consistency(teacher, teacher, images, _config(steps=1, batch_size=2))
    state = tmp_path / "state.safetensors"
    student = copy.deepcopy(teacher)
    cm.distill_consistency(student, teacher, images, _config(steps=2, batch_size=4, seed=1, state_path=state),
                           n_grid=6, target_decay=0.5)
    target, history = cm.distill_consistency(student, teacher, images,
                                             _config(steps=4, batch_size=4, seed=1, state_path=state),
                                             n_grid=6, target_decay=0.5)
    assert history == h1
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), t1.parameters()))


def test_distill_consistency_names_bad_settings():
    teacher = kd.models.UNet(widths=(4, 8, 8), emb_dim=8)
    images = torch.zeros(4, 1, 28, 28)
    config = kd.TrainConfig(steps=1, batch_size=2, device="cpu", progress=False)
    with pytest.raises(ValueError, match="n_grid=1"):
        cm.distill_consistency(copy.deepcopy(teacher), teacher, images, config, n_grid=1)
    with pytest.raises(ValueError, match="target_decay=1.0"):
        cm.distill_consistency(copy.deepcopy(teacher), teacher, images, config, target_decay=1.0)
