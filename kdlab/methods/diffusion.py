"""Diffusion teachers and progressive distillation (notebook 06; Salimans and Ho 2022, arXiv
2202.00512): the v-parameterisation, DDIM sampling, :func:`diffusion_step` / :func:`train_diffusion`
and :func:`progressive_step` / :func:`distill_round`.

Notation (continuous time ``t`` in [0, 1], variance preserving, cosine schedule):

    alpha_t = cos(pi t / 2),  sigma_t = sin(pi t / 2),  alpha_t^2 + sigma_t^2 = 1
    z_t = alpha_t x + sigma_t eps,                  eps ~ N(0, I)
    v   = alpha_t eps - sigma_t x                   (what the network predicts)
    x   = alpha_t z_t - sigma_t v,   eps = sigma_t z_t + alpha_t v
    DDIM step t -> s:  z_s = alpha_s x_hat + sigma_s eps_hat   (deterministic; eps_hat from z_t, x_hat)

Progressive distillation: a student sampler with ``N`` steps is trained so that its one step from
``t`` to ``t - 1/N`` lands where the teacher's two DDIM steps ``t -> t - 1/(2N) -> t - 1/N`` land. The
DDIM step is linear in ``x_hat``, so the student's target prediction is (paper, eq. 8 in Algorithm 2)

    x_tilde = (z_{t''} - (sigma_{t''} / sigma_t) z_t) / (alpha_{t''} - (sigma_{t''} / sigma_t) alpha_t)

and the student regresses the v that corresponds to ``x_tilde`` at ``z_t``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import models
from ..engine import EMA, History, Trainer, TrainConfig, check_images, freeze, sample_batch
from ..utils import check_int, progress_bar


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine schedule: ``(cos(pi t / 2), sin(pi t / 2))`` for ``t`` of any shape, in float64 if ``t`` is."""
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


def per_image(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``a [N]`` -> ``[N, 1, 1, 1]`` (broadcast over images ``like``)."""
    return a.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def diffuse(x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``z_t = alpha_t x + sigma_t eps`` for images ``x`` ``[N, C, H, W]``, times ``t`` ``[N]``."""
    a, s = alpha_sigma(t)
    return per_image(a, x) * x + per_image(s, x) * eps


def v_target(x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``v = alpha_t eps - sigma_t x``."""
    a, s = alpha_sigma(t)
    return per_image(a, x) * eps - per_image(s, x) * x


def x_eps_from_v(z: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_hat, eps_hat) = (alpha_t z - sigma_t v, sigma_t z + alpha_t v)``."""
    a, s = alpha_sigma(t)
    a, s = per_image(a, z), per_image(s, z)
    return a * z - s * v, s * z + a * v


def v_from_x(z: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The v whose ``x_hat`` is ``x`` at ``z_t``: ``eps = (z - alpha_t x) / sigma_t``, ``v = alpha_t eps - sigma_t x``
    (``sigma_t > 0``, i.e. ``t > 0``)."""
    a, s = alpha_sigma(t)
    a, s = per_image(a, z), per_image(s, z)
    return a * (z - a * x) / s - s * x


def ddim_step(z: torch.Tensor, t: torch.Tensor, s: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step from time ``t`` to ``s < t`` given the prediction ``x_hat``:
    ``z_s = alpha_s x_hat + sigma_s (z_t - alpha_t x_hat) / sigma_t``."""
    a_t, s_t = alpha_sigma(t)
    a_s, s_s = alpha_sigma(s)
    eps_hat = (z - per_image(a_t, z) * x_hat) / per_image(s_t, z)
    return per_image(a_s, z) * x_hat + per_image(s_s, z) * eps_hat


def predict_x(model: nn.Module, z: torch.Tensor, t: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """``x_hat`` from a v-prediction model, clipped to the data range [-1, 1] when ``clip``."""
    x_hat = x_eps_from_v(z, t, model(z, t))[0]
    return x_hat.clamp(-1, 1) if clip else x_hat


@torch.no_grad()
def sample(model: nn.Module, noise: torch.Tensor, steps: int, clip: bool = True, desc: str | None = None) -> torch.Tensor:
    """DDIM with ``steps`` equal steps from ``t = 1`` (``z_1 = noise`` ``[N, C, H, W]``) to ``t = 0``;
    returns ``x [N, C, H, W]``. One network evaluation per step; ``desc``: show a progress bar."""
    check_int("steps", steps)
    z, n = noise, noise.shape[0]
    for i in progress_bar(range(steps, 0, -1), desc=desc, disable=desc is None, total=steps):
        t = torch.full((n,), i / steps, device=noise.device, dtype=noise.dtype)
        s = torch.full((n,), (i - 1) / steps, device=noise.device, dtype=noise.dtype)
        z = ddim_step(z, t, s, predict_x(model, z, t, clip))
    return z


@torch.no_grad()
def renoising_sample(predict, noise: torch.Tensor, times: list[float], g: torch.Generator | None = None) -> torch.Tensor:
    """Sampling by re-noising, for few-step students (consistency models' Algorithm 1, DMD2's multi-step
    generator): ``x = predict(noise, 1)``, then for each later time ``t`` in ``times`` (already checked:
    decreasing from 1.0) re-noise ``z_t = alpha_t x + sigma_t eps`` with fresh ``eps`` from ``g`` and
    ``x = predict(z_t, t)``. ``predict(z [N, C, H, W], t [N]) -> x``; returns ``x`` clipped to [-1, 1]."""
    n = len(noise)
    full = lambda t: torch.full((n,), t, device=noise.device, dtype=noise.dtype)
    x = predict(noise, full(1.0))  # z_1 = noise (alpha_1 = 0)
    for t in times[1:]:
        eps = torch.randn(noise.shape, generator=g).to(noise.device, noise.dtype)
        x = predict(diffuse(x.clamp(-1, 1), full(t), eps), full(t))
    return x.clamp(-1, 1)


def check_halvings(base_steps: int, min_steps: int) -> None:
    """Raise ``ValueError`` unless ``base_steps`` and ``min_steps`` are powers of two with
    ``min_steps < base_steps``: progressive distillation halves the step count every round."""
    check_int("base_steps", base_steps)
    check_int("min_steps", min_steps)
    if base_steps & (base_steps - 1) or min_steps & (min_steps - 1) or min_steps >= base_steps:
        raise ValueError(f"base_steps={base_steps!r} and min_steps={min_steps!r} are not valid; expected powers of two "
                         "with min_steps < base_steps (each round halves the step count)")


def two_step_target(teacher: nn.Module, z: torch.Tensor, t: torch.Tensor, student_steps: int,
                    clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's two DDIM steps ``t -> t - 1/(2N) -> t - 1/N`` (``N = student_steps``) and the
    student target ``x_tilde`` that reaches the same ``z_{t''}`` in one step. Returns ``(x_tilde, z_t'')``."""
    t1, t2 = t - 0.5 / student_steps, t - 1.0 / student_steps
    z1 = ddim_step(z, t, t1, predict_x(teacher, z, t, clip))
    z2 = ddim_step(z1, t1, t2, predict_x(teacher, z1, t1, clip))
    a_t, s_t = alpha_sigma(t)
    a_2, s_2 = alpha_sigma(t2)
    ratio = per_image(s_2 / s_t, z)
    x_tilde = (z2 - ratio * z) / (per_image(a_2, z) - ratio * per_image(a_t, z))
    return x_tilde, z2


def diffusion_step(model: nn.Module, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """One teacher-training step on images ``x`` ``[B, C, H, W]``, times ``t`` ``[B]`` and noise ``eps``
    (shaped like ``x``); returns the mean squared v error before the step."""
    # z_t = alpha_t x + sigma_t eps,   v = alpha_t eps - sigma_t x,   L = mean (v_hat(z_t, t) - v)^2
    loss = (model(diffuse(x, t, eps), t) - v_target(x, t, eps)).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.detach()}


def train_diffusion(model: nn.Module, images: torch.Tensor, config: TrainConfig,
                    ema_decay: float = 0.999) -> tuple[nn.Module, History]:
    """Teacher training: :func:`diffusion_step` with ``t ~ U(0, 1)``, ``eps ~ N(0, I)`` on ``images``
    ``[N, C, H, W]`` in [-1, 1], Adam whose learning rate ``config.lr`` is warmed up over the first 5%
    of the steps then cosine-decayed, and an :class:`EMA` of the weights after every step. Returns
    ``(ema_model, history)``: sample from the EMA weights. History key ``loss``."""
    check_images(images, model)
    ema = EMA(model, ema_decay)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    warmup, steps = max(1, config.steps // 20), config.steps
    trainer = Trainer(config, modules={"model": model, "ema": ema.model}, optimizers={"opt": opt},
                      run={"kind": "diffusion-v", "ema_decay": ema_decay, "steps": steps,
                           "model": models.architecture(model)}, desc="diffusion teacher", distributed=True)
    trainer.add_callback("on_step_end", lambda tr: ema.update(model))

    def step(s: int, g: torch.Generator):
        for group in opt.param_groups:  # warm-up, then cosine decay: a function of the step, so resuming is exact
            group["lr"] = config.lr * min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
        x = sample_batch(images, config.batch_size, g)  # (B, C, H, W), the global batch, where the images are
        t = torch.rand(config.batch_size, generator=g)  # (B,)
        eps = torch.randn(x.shape, generator=g)
        return diffusion_step(trainer.net("model"), *map(trainer.shard, (x, t, eps)), opt)  # this process's rows, on its device

    trainer.fit(step)
    return ema.model.eval(), trainer.history


def progressive_step(student: nn.Module, teacher: nn.Module, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                     opt: torch.optim.Optimizer, student_steps: int) -> dict[str, torch.Tensor]:
    """One progressive-distillation step: images ``x`` ``[B, C, H, W]`` noised to times ``t`` ``[B]`` on
    the student's grid of ``student_steps`` steps; the student's one step must land where the
    teacher's two land (:func:`two_step_target`). Returns the mean squared v error before the step."""
    z = diffuse(x, t, eps)  # z_t = alpha_t x + sigma_t eps
    with torch.no_grad():
        x_tilde, _ = two_step_target(teacher, z, t, student_steps)  # one step with x_tilde = two teacher steps
        target = v_from_x(z, t, x_tilde)  # the v whose x_hat at z_t is x_tilde
    # L = mean (v_student(z_t, t) - v_tilde)^2
    loss = (student(z, t) - target).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.detach()}


def distill_round(student: nn.Module, teacher: nn.Module, images: torch.Tensor, config: TrainConfig, *,
                  student_steps: int) -> History:
    """One round of progressive distillation: ``student`` (a copy of ``teacher``) learns to take
    ``student_steps`` DDIM steps where the teacher takes ``2 * student_steps``: :func:`progressive_step`
    on training ``images`` with ``t = i / N``, ``i`` uniform in 1..N, for ``config.steps`` steps, Adam
    with ``config.lr``. History key ``loss``."""
    check_int("student_steps", student_steps)
    check_images(images, student)
    if student is teacher:
        raise ValueError("the student must be a separate copy of the teacher (copy.deepcopy(teacher))")
    freeze(teacher, config.device)
    for p in student.parameters():  # a copy of a frozen teacher starts frozen too
        p.requires_grad_(True)
    opt = torch.optim.Adam(student.parameters(), lr=config.lr)
    trainer = Trainer(config, modules={"student": student}, optimizers={"opt": opt},
                      run={"kind": "progressive-distillation", "student_steps": student_steps,
                           "model": models.architecture(student)},
                      desc=f"distil {2 * student_steps} -> {student_steps} steps", distributed=True)

    def step(s: int, g: torch.Generator):
        x = sample_batch(images, config.batch_size, g)  # (B, C, H, W), the global batch
        i = torch.randint(1, student_steps + 1, (config.batch_size,), generator=g)
        t = (i.double() / student_steps).to(images.dtype)  # (B,) on the student's grid
        eps = torch.randn(x.shape, generator=g)
        return progressive_step(trainer.net("student"), teacher, *map(trainer.shard, (x, t, eps)), opt, student_steps)

    return trainer.fit(step)
