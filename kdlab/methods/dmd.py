"""Distribution-matching distillation (Yin et al. 2024, arXiv 2311.18828) of the diffusion teacher
of notebook 06 into a one-step generator: the original DMD's matching gradient and regression term
(a squared error to the teacher's own images for fixed noises, where the paper uses LPIPS), with
DMD2's (arXiv 2405.14867) two time-scale rule, the fake score updated several times per generator
step. ``reg_weight=0`` is DMD2 without its GAN term, which kdlab does not implement. DMD2's multi-step
generator (``sampling_times``, :func:`multistep_sample`, :func:`simulated_input`: trained at several times
on its own re-noised samples, "backward simulation") is notebook 08's 2- and 4-step DMD student.

Schedule and notation as in :mod:`kdlab.methods.diffusion`. A v-prediction network ``m`` gives the
score of its diffused distribution at ``z_t``:

    x_hat = alpha_t z - sigma_t v(z, t),    score(z, t) = grad_z log p_t(z) = -(z - alpha_t x_hat) / sigma_t^2

The generator maps noise to images in one evaluation, ``x = G(z) = x_hat_G(z, t = 1) = -v_G(z, 1)``. Its
distribution diffused to time ``t`` is ``p_fake,t``; the teacher's is ``p_real,t``. For ``x_t = alpha_t x +
sigma_t eps`` the reparameterised gradient of ``KL(p_fake,t || p_real,t)`` with respect to the generator's
parameters is (the paper's eq. 7; the score-of-parameters term has zero mean)

    grad_theta KL = E[ (score_fake(x_t) - score_real(x_t)) d x_t / d theta ]
                  = E[ alpha_t (score_fake - score_real) d x / d theta ]

so each generated image is pushed along ``-alpha_t (score_fake - score_real)``. The teacher supplies
``score_real``; ``score_fake`` comes from a second network (a copy of the teacher) trained online with
the ordinary diffusion loss on the generator's own images. The weighting (as in the authors' released
DMD2 code) divides each image's gradient by the mean absolute gap between ``x`` and the teacher's
prediction, which evens out its scale across ``t``; across a batch this reweights the images, so the
parameters follow a reweighted KL gradient.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import models
from ..engine import History, Trainer, TrainConfig, freeze
from ..utils import check_int, non_negative
from .diffusion import alpha_sigma, diffuse, diffusion_step, per_image, predict_x, renoising_sample, sample

T_RANGE = (0.02, 0.98)  # times the generator's images are diffused to (the paper: 2% to 98% of the schedule)
# Adam's (beta1, beta2) for generator and fake score: less momentum than the default 0.9, as GANs use, because the two
# chase each other. Measured 2026-11-30 on seed 0's evaluation noise (500-sample FID of one run every 250 steps from
# step 750 on; docs/results.md): beta1 = 0.9 swung between 126 and 242 (to step 1,500), 0 between 104 and 203, 0.5
# stayed between 121 and 154 (to step 2,000).
BETAS = (0.5, 0.999)


def score(model: nn.Module, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``grad_z log p_t(z) = -(z - alpha_t x_hat) / sigma_t^2`` of a v-prediction ``model`` at noisy images
    ``z`` ``[N, C, H, W]`` and times ``t`` ``[N]`` (``0 < t``), from its unclipped ``x_hat``."""
    a, s = alpha_sigma(t)
    return -(z - per_image(a, z) * predict_x(model, z, t, clip=False)) / per_image(s, z) ** 2


def generate(generator: nn.Module, noise: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """One-step images ``G(z) = x_hat_G(z, 1)`` ``[N, C, H, W]`` (unclipped, differentiable); with ``t < 1``
    the generator's image from a noisy input ``z_t`` (a step of :func:`multistep_sample`)."""
    return predict_x(generator, noise, torch.full((len(noise),), t, device=noise.device, dtype=noise.dtype), clip=False)


def check_sampling_times(times) -> list[float]:
    """``times`` as floats, decreasing from 1.0 and all above 0, or ``ValueError``."""
    times = [float(t) for t in times]
    if not times or times[0] != 1.0 or any(b >= a for a, b in zip(times, times[1:])) or times[-1] <= 0:
        raise ValueError(f"sampling_times={times!r} is not valid; expected decreasing times from 1.0, all > 0 "
                         "(e.g. [1.0] or [1.0, 0.75, 0.5, 0.25])")
    return times


@torch.no_grad()
def multistep_sample(generator: nn.Module, noise: torch.Tensor, times, g: torch.Generator | None = None) -> torch.Tensor:
    """DMD2's multi-step sampling: ``x = G(noise, 1)``, then for each later time ``t`` re-noise ``z_t =
    alpha_t x + sigma_t eps`` (fresh ``eps`` from ``g``) and ``x = G(z_t, t)``. ``noise`` ``[N, C, H, W]``;
    one network evaluation per time; returns ``x`` clipped to [-1, 1]."""
    return renoising_sample(lambda z, t: predict_x(generator, z, t, clip=False), noise, check_sampling_times(times), g)


@torch.no_grad()
def simulated_input(generator: nn.Module, noise: torch.Tensor, times, k: int, g: torch.Generator) -> torch.Tensor:
    """DMD2's backward simulation: the input the generator meets at ``times[k]`` when it samples, its own
    ``k``-step sample from ``noise`` re-noised to ``times[k]`` (fresh noise from ``g``); ``noise`` itself for
    ``k = 0``."""
    times = check_sampling_times(times)
    if not 0 <= k < len(times):
        raise ValueError(f"k={k!r} is not valid; expected 0 <= k < {len(times)}")
    if k == 0:
        return noise
    x = multistep_sample(generator, noise, times[:k], g)
    eps = torch.randn(noise.shape, generator=g).to(noise.device, noise.dtype)
    return diffuse(x, torch.full((len(noise),), times[k], device=noise.device, dtype=noise.dtype), eps)


@torch.no_grad()
def matching_gradient(real: nn.Module, fake: nn.Module, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                      normalise: bool = True) -> torch.Tensor:
    """The distribution-matching gradient at generated images ``x`` ``[N, C, H, W]``, one Monte Carlo
    sample per image (times ``t`` ``[N]``, noise ``eps`` like ``x``): ``alpha_t (score_fake(x_t) -
    score_real(x_t))`` at ``x_t = alpha_t x + sigma_t eps``. With ``normalise`` (the weighting of the authors'
    released code; the paper's ``w_t`` keeps a further factor ``alpha_t``) it
    is rescaled per image to ``(x_hat_fake - x_hat_real) / mean |x - x_hat_real|``, the same direction for
    each image (``alpha_t (score_fake - score_real) = alpha_t^2 (x_hat_fake - x_hat_real) / sigma_t^2``)."""
    z = diffuse(x, t, eps)
    if not normalise:
        a, _ = alpha_sigma(t)
        return per_image(a, x) * (score(fake, z, t) - score(real, z, t))
    x_real, x_fake = predict_x(real, z, t, clip=False), predict_x(fake, z, t, clip=False)
    scale = (x - x_real).abs().mean(dim=tuple(range(1, x.dim())), keepdim=True).clamp_min(1e-8)
    return (x_fake - x_real) / scale


def generator_step(generator: nn.Module, real: nn.Module, fake: nn.Module, noise: torch.Tensor, t: torch.Tensor,
                   eps: torch.Tensor, opt: torch.optim.Optimizer,
                   pair: tuple[torch.Tensor, torch.Tensor] | None = None, reg_weight: float = 0.0,
                   t_gen: float = 1.0) -> dict[str, torch.Tensor]:
    """One generator step: ``x = G(noise)``; the surrogate ``L_DMD = 0.5 mean (x - stopgrad(x - g))^2`` has
    ``dL/dx = g / numel``, so the step follows the matching gradient ``g`` (:func:`matching_gradient`).
    With ``pair = (z_ref, x_ref)`` (teacher images ``x_ref`` for noises ``z_ref``, both ``[R, C, H, W]``) the
    regression term ``reg_weight * mean (G(z_ref) - x_ref)^2`` is added. ``t_gen < 1``: ``noise`` is the
    generator's noisy input at that time (:func:`simulated_input`) and ``x = G(noise, t_gen)``. Returns the
    loss, the mean absolute gradient and the regression error."""
    x = generate(generator, noise, t_gen)
    g = matching_gradient(real, fake, x.detach(), t, eps)
    loss = 0.5 * (x - (x - g).detach()).pow(2).mean()
    reg = torch.zeros((), device=x.device)
    if pair is not None:
        z_ref, x_ref = pair
        reg = (generate(generator, z_ref) - x_ref).pow(2).mean()  # L_reg = mean (G(z_ref) - x_ref)^2
        loss = loss + reg_weight * reg
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.detach(), "gradient": g.abs().mean(), "regression": reg.detach()}


@torch.no_grad()
def regression_pairs(teacher: nn.Module, n: int, g: torch.Generator, steps: int = 64, device="cpu"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z_ref, x_ref)``: ``n`` noises ``[n, C, H, W]`` drawn from ``g`` and the teacher's ``steps``-step DDIM
    images for them, the regression targets of the original DMD."""
    check_int("n", n)
    shape = (n, teacher.config["channels"], teacher.config["img_size"], teacher.config["img_size"])
    z = torch.randn(shape, generator=g).to(device)
    return z, sample(teacher, z, steps, desc=f"teacher images for {n} regression pairs")


def fake_score_step(fake: nn.Module, images: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                    opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Fit the fake score to the generator's (detached) ``images`` with the ordinary diffusion loss
    (:func:`kdlab.methods.diffusion.diffusion_step`)."""
    return diffusion_step(fake, images.detach(), t, eps, opt)


def distill_dmd(generator: nn.Module, fake: nn.Module, teacher: nn.Module, config: TrainConfig, *,
                fake_updates: int = 4, fake_lr: float | None = None, t_range: tuple[float, float] = T_RANGE,
                pairs: tuple[torch.Tensor, torch.Tensor] | None = None, reg_weight: float = 0.0,
                betas: tuple[float, float] = BETAS, sampling_times=(1.0,)) -> History:
    """Each step fits the fake score ``fake_updates`` times to fresh generator images
    (:func:`fake_score_step`; DMD2's two time-scale rule), then takes one :func:`generator_step`, with
    a batch of the regression ``pairs`` (:func:`regression_pairs`) weighted by ``reg_weight`` when given.
    ``generator`` and ``fake`` are separate copies of ``teacher``; noise, times and pair indices come
    from the step's generator, ``config.batch_size`` images per update, Adam for both (``config.lr``,
    and ``fake_lr`` for the fake score, default the same; ``betas`` for both). No data images are needed:
    the teacher stands for the data. History keys ``loss``, ``gradient``, ``regression``, ``fake_loss``.

    ``sampling_times`` with several times trains a multi-step generator (DMD2): each step draws one
    ``k``, and both the fake score's images and the generator step start from :func:`simulated_input`
    at ``sampling_times[k]``; sample it with :func:`multistep_sample`. With ``(1.0,)`` no ``k`` is drawn."""
    check_int("fake_updates", fake_updates)
    sampling_times = check_sampling_times(sampling_times)
    if not non_negative(reg_weight):
        raise ValueError(f"reg_weight={reg_weight!r} is not valid; expected a finite number >= 0")
    image = (teacher.config["channels"], teacher.config["img_size"], teacher.config["img_size"])
    if pairs is not None and not (isinstance(pairs, (tuple, list)) and len(pairs) == 2
                                  and all(isinstance(p, torch.Tensor) and p.dim() == 4 and tuple(p.shape[1:]) == image
                                          for p in pairs) and len(pairs[0]) == len(pairs[1]) > 0):
        got = ([tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__ for p in pairs]
               if isinstance(pairs, (tuple, list)) else type(pairs).__name__)
        raise ValueError(f"pairs must be (z_ref, x_ref), two tensors of the same shape [R, {', '.join(map(str, image))}] "
                         f"with R >= 1 (dmd.regression_pairs); got {got}")
    if reg_weight > 0 and pairs is None:
        raise ValueError(f"reg_weight={reg_weight!r} needs pairs=(z_ref, x_ref) (dmd.regression_pairs)")
    if fake_lr is not None and not 0 < fake_lr < float("inf"):
        raise ValueError(f"fake_lr={fake_lr!r} is not valid; expected a finite number > 0 (or None: config.lr)")
    lo, hi = t_range
    if not 0 < lo < hi < 1:
        raise ValueError(f"t_range={t_range!r} is not valid; expected 0 < lo < hi < 1")
    if generator is teacher or fake is teacher or fake is generator:
        raise ValueError("generator, fake score and teacher must be three separate networks (copy.deepcopy(teacher))")
    freeze(teacher, config.device)
    for net in (generator, fake):
        for p in net.parameters():  # copies of a frozen teacher start frozen too
            p.requires_grad_(True)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    opt_f = torch.optim.Adam(fake.parameters(), lr=config.lr if fake_lr is None else fake_lr, betas=betas)
    trainer = Trainer(config, modules={"generator": generator, "fake": fake}, optimizers={"g": opt_g, "f": opt_f},
                      run={"kind": "distribution-matching", "fake_updates": fake_updates, "fake_lr": fake_lr,
                           "t_range": list(t_range), "reg_weight": reg_weight, "betas": list(betas),
                           "pairs": 0 if pairs is None else len(pairs[0]), "sampling_times": sampling_times,
                           "model": models.architecture(generator)},
                      desc="distribution matching")
    def draw(g: torch.Generator, like: torch.Tensor | None = None):
        size = like.shape if like is not None else (config.batch_size, teacher.config["channels"],
                                                    teacher.config["img_size"], teacher.config["img_size"])
        return torch.randn(size, generator=g).to(trainer.device)

    def times(g: torch.Generator) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(config.batch_size, generator=g)).to(trainer.device)

    def step(s: int, g: torch.Generator):
        k = 0 if len(sampling_times) == 1 else int(torch.randint(len(sampling_times), (1,), generator=g))
        inputs = lambda: draw(g) if k == 0 else simulated_input(generator, draw(g), sampling_times, k, g)
        fake_loss = 0.0
        for _ in range(fake_updates):
            with torch.no_grad():
                images = generate(generator, inputs(), sampling_times[k])
            fake_loss += fake_score_step(fake, images, times(g), draw(g, images), opt_f)["loss"].item() / fake_updates
        pair = None
        if pairs is not None:
            idx = torch.randint(len(pairs[0]), (config.batch_size,), generator=g)
            pair = (pairs[0][idx.to(pairs[0].device)].to(trainer.device), pairs[1][idx.to(pairs[1].device)].to(trainer.device))
        out = generator_step(generator, teacher, fake, inputs(), times(g), draw(g), opt_g, pair, reg_weight,
                             sampling_times[k])
        return {**out, "fake_loss": torch.tensor(fake_loss)}

    return trainer.fit(step)
