"""Consistency distillation (Song, Dhariwal, Chen and Sutskever 2023, arXiv 2303.01469, Algorithm 2)
of the diffusion teacher of notebook 06: a student ``f`` that maps any point ``z_t`` of the
teacher's probability-flow (DDIM) trajectory to the trajectory's start, so that one evaluation
makes an image.

Time and schedule as in :mod:`kdlab.methods.diffusion`: ``t`` in [0, 1], ``alpha_t = cos(pi t / 2)``,
``sigma_t = sin(pi t / 2)``, ``z_t = alpha_t x + sigma_t eps``. The consistency function is

    f(z, t) = c_skip(t) z + c_out(t) F(z, t),     F(z, t) = alpha_t z - sigma_t v(z, t)

with ``F`` the network's ``x`` prediction from its v output. The boundary condition of the paper,
``f(z, t_min) = z``, holds exactly because ``c_skip(t_min) = 1`` and ``c_out(t_min) = 0`` exactly:

    s(t) = sigma_t / alpha_t                      (the noise level of z_t / alpha_t = x + s eps)
    c_skip(t) = sigma_d^2 / ((k (s(t) - s(t_min)))^2 + sigma_d^2),    c_out(t) = 1 - c_skip(t)

The paper requires only those two boundary values and differentiability; its own choice (Appendix
C, from EDM) pairs ``c_skip`` without the factor ``k`` with a unit-variance network output. Here ``F``
is an ``x`` prediction in data units, so ``c_out = 1 - c_skip`` makes ``f = F`` wherever ``c_skip`` has
fallen to 0, and the factor ``k = 10`` (as the latent consistency models' scheduler scales its time)
makes it fall fast: ``c_skip`` is 0.23 at ``t = 0.06``, 0.024 at ``t = 0.2`` and 0.0025 at ``t = 0.5``
(with ``k = 1``: 0.97, 0.71 and 0.20, so a teacher-initialised ``f`` would keep a large share of the
noisy input up to mid times, and learn slowly at small ``t``, where ``c_out`` scales its gradient). So
a student copied from the teacher starts at the teacher's one-step denoiser everywhere except a thin
band above ``t_min``. ``sigma_d = 0.5``.

Distillation (Algorithm 2): on the grid ``t_min = t_1 < ... < t_N = 1``, draw ``n``, noise a data image
to ``z_{t_{n+1}}``, take **one** teacher DDIM step to ``t_n``, and regress the student's
``f(z_{t_{n+1}}, t_{n+1})`` on the target network's ``f^-(z_hat_{t_n}, t_n)`` (squared error here); the
target network is an exponential moving average of the student, ``theta^- <- mu theta^- + (1 - mu) theta``
(:class:`kdlab.engine.EMA`).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import models
from ..engine import EMA, History, Trainer, TrainConfig, check_images, freeze, sample_batch
from ..utils import check_int, decay
from .diffusion import alpha_sigma, ddim_step, diffuse, per_image, predict_x, renoising_sample

T_MIN = 0.002  # the smallest time, where f is the identity
SIGMA_DATA = 0.5  # sigma_d: the data's standard deviation in EDM's c_skip (images in [-1, 1])
SKIP_SCALE = 10.0  # k: how fast c_skip falls from 1 at t_min (module docstring)


def time_grid(n: int, t_min: float = T_MIN, dtype=torch.float64) -> torch.Tensor:
    """``n`` times ``t_min = t_1 < ... < t_n = 1``, equally spaced in ``t`` ``[n]``."""
    check_int("n", n, 2)
    if not 0 < t_min < 1:
        raise ValueError(f"t_min={t_min!r} is not valid; expected 0 < t_min < 1")
    return torch.linspace(t_min, 1.0, n, dtype=dtype)


def skip_out(t: torch.Tensor, t_min: float = T_MIN, sigma_data: float = SIGMA_DATA,
             scale: float = SKIP_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip(t), c_out(t))`` for times ``t`` ``[N]`` (module docstring); ``(1, 0)`` exactly at ``t_min``."""
    a, s = alpha_sigma(t)
    a_min, s_min = alpha_sigma(torch.full_like(t, t_min))
    gap = scale * (s / a - s_min / a_min)  # k (s(t) - s(t_min)): exactly 0 at t_min (same operations, same number)
    c_skip = sigma_data ** 2 / (gap ** 2 + sigma_data ** 2)
    return c_skip, 1 - c_skip


def consistency_function(model: nn.Module, z: torch.Tensor, t: torch.Tensor, t_min: float = T_MIN) -> torch.Tensor:
    """``f(z, t) = c_skip(t) z + c_out(t) F(z, t)`` for noisy images ``z`` ``[N, C, H, W]`` at times ``t``
    ``[N]`` (``t >= t_min``); ``F`` is ``model``'s (a v-prediction network's) unclipped ``x`` prediction."""
    c_skip, c_out = skip_out(t, t_min)
    return per_image(c_skip, z) * z + per_image(c_out, z) * predict_x(model, z, t, clip=False)


@torch.no_grad()
def consistency_target(teacher: nn.Module, target: nn.Module, z: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
                       t_min: float = T_MIN) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's one DDIM step ``z_t -> z_hat_{t_prev}`` (its clipped ``x`` prediction, as its sampler
    uses) and the target network's ``f^-(z_hat_{t_prev}, t_prev)``. Returns ``(target images, z_hat)``."""
    z_prev = ddim_step(z, t, t_prev, predict_x(teacher, z, t))
    return consistency_function(target, z_prev, t_prev, t_min), z_prev


def consistency_step(student: nn.Module, target: nn.Module, teacher: nn.Module, x: torch.Tensor, eps: torch.Tensor,
                     t: torch.Tensor, t_prev: torch.Tensor, opt: torch.optim.Optimizer,
                     t_min: float = T_MIN) -> dict[str, torch.Tensor]:
    """One consistency-distillation step on images ``x`` ``[B, C, H, W]`` with noise ``eps`` at adjacent
    grid times ``t_prev < t`` ``[B]``: ``L = mean (f(z_t, t) - f^-(z_hat_{t_prev}, t_prev))^2``. Updates
    the student only (the caller averages it into ``target``). Returns the loss before the step."""
    z = diffuse(x, t, eps)  # z_t = alpha_t x + sigma_t eps
    y, _ = consistency_target(teacher, target, z, t, t_prev, t_min)
    loss = (consistency_function(student, z, t, t_min) - y).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.detach()}


@torch.no_grad()
def sample(model: nn.Module, noise: torch.Tensor, times, g: torch.Generator | None = None,
           t_min: float = T_MIN) -> torch.Tensor:
    """Multistep consistency sampling (the paper's Algorithm 1): ``x = f(noise, times[0])``, then for
    each later time ``t`` re-noise ``z = alpha_t x + sigma_t eps`` and ``x = f(z, t)``. ``times`` decrease
    from 1 (e.g. ``[1.0]`` for one step, ``[1.0, 0.5]`` for two); ``noise`` ``[N, C, H, W]``; fresh noise
    comes from ``g``. One network evaluation per time; returns ``x`` clipped to [-1, 1]."""
    times = [float(t) for t in times]
    if not times or times[0] != 1.0 or any(b >= a for a, b in zip(times, times[1:])) or times[-1] < t_min:
        raise ValueError(f"times={times!r} is not valid; expected decreasing times from 1.0 down to at least t_min={t_min}")
    return renoising_sample(lambda z, t: consistency_function(model, z, t, t_min), noise, times, g)


def distill_consistency(student: nn.Module, teacher: nn.Module, images: torch.Tensor, config: TrainConfig, *,
                        n_grid: int = 18, target_decay: float = 0.95, t_min: float = T_MIN) -> tuple[nn.Module, History]:
    """Consistency distillation: :func:`consistency_step` on training ``images`` with ``n`` uniform over
    the ``n_grid - 1`` adjacent pairs of :func:`time_grid`, Adam with ``config.lr``, and the target
    network an :class:`EMA` of the student with decay ``target_decay`` (the paper's ``mu``) after every
    step. ``student`` is a copy of ``teacher``. Returns ``(target network, history)``; key ``loss``. Sampling
    from the target network is a choice (the paper also keeps a slower average of the student)."""
    check_images(images, student)
    check_int("n_grid", n_grid, 2)
    if not decay(target_decay):
        raise ValueError(f"target_decay={target_decay!r} is not valid; expected {decay.__doc__}")
    if student is teacher:
        raise ValueError("the student must be a separate copy of the teacher (copy.deepcopy(teacher))")
    grid = time_grid(n_grid, t_min)
    freeze(teacher, config.device)
    for p in student.parameters():  # a copy of a frozen teacher starts frozen too
        p.requires_grad_(True)
    target = EMA(student, target_decay)
    opt = torch.optim.Adam(student.parameters(), lr=config.lr)
    trainer = Trainer(config, modules={"student": student, "target": target.model}, optimizers={"opt": opt},
                      run={"kind": "consistency-distillation", "n_grid": n_grid, "target_decay": target_decay,
                           "t_min": t_min, "model": models.architecture(student)},
                      desc=f"consistency distillation (N = {n_grid})")
    trainer.add_callback("on_step_end", lambda tr: target.update(student))

    def step(s: int, g: torch.Generator):
        x = sample_batch(images, config.batch_size, g, trainer.device)  # (B, C, H, W)
        i = torch.randint(0, n_grid - 1, (config.batch_size,), generator=g)  # pair (t_i, t_{i+1})
        t_prev, t = grid[i].to(trainer.device, images.dtype), grid[i + 1].to(trainer.device, images.dtype)
        eps = torch.randn(x.shape, generator=g).to(trainer.device)
        return consistency_step(student, target.model, teacher, x, eps, t, t_prev, opt, t_min)

    history = trainer.fit(step)
    return target.model.eval(), history
