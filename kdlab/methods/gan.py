"""GAN teachers and their same-noise distillation (notebooks 01, 02, 04, 05).

Each method is a short step function, written as the notebooks teach it, and a loop that hands
it batches through :class:`kdlab.engine.Trainer`:

- :func:`gan_step` / :func:`train_gan`: adversarial training of a DCGAN teacher (notebook 01);
- :func:`distill_step` / :func:`distill`: output distillation with shared noise, MSE or L1, the
  joint MSE + adversarial loss of Aguinaldo et al. 2019 (arXiv 1902.00159), and optional feature
  terms (hint, attention transfer, Gram) through 1x1 adapters (notebooks 02, 04, 05).

Measured on 2026-11-30, 2 CPU cores, batch 64: one distillation step of a width-4 student costs
13.8 ms with the width-32 teacher's forward pass inside it and 4.5 ms with that pass read from a
:class:`TeacherCache` (the teacher's images for the same noise are the same for every student).
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import feature_losses, kernels, losses, models
from ..engine import EMA, History, Trainer, TrainConfig, check_images, freeze, sample_batch
from ..taps import FeatureTap
from ..utils import check_choice

RECIPE_LOSSES = losses.OUTPUT_LOSSES + ("joint",)
DCGAN_BETAS = (0.5, 0.999)  # Adam's betas in DCGAN (Radford et al. 2015)


def diff_augment(x: torch.Tensor, g: torch.Generator, shift: float = 0.125, cutout: float = 0.5) -> torch.Tensor:
    """Differentiable augmentation (Zhao et al. 2020, arXiv 2006.10738) of images ``[B, C, H, W]``:
    each image moves by a random whole number of pixels, at most ``shift * H`` (``shift * W``) each way,
    with the background value -1 coming in, then a random square of side ``cutout * H`` is set to 0.
    Draws come from ``g`` on the CPU. The discriminator sees only augmented images, real and
    generated alike, so it cannot memorise a small training set, while the generator still learns the
    un-augmented images (the gradient flows through the shift and the mask)."""
    b, _, h, w = x.shape
    sy, sx = int(h * shift), int(w * shift)
    dy = torch.randint(-sy, sy + 1, (b,), generator=g).to(x.device)
    dx = torch.randint(-sx, sx + 1, (b,), generator=g).to(x.device)
    padded = F.pad(x, (sx, sx, sy, sy), value=-1.0)  # (B, C, H + 2 sy, W + 2 sx)
    rows = torch.arange(h, device=x.device)[None] + sy - dy[:, None]  # (B, H) source row of every output row
    cols = torch.arange(w, device=x.device)[None] + sx - dx[:, None]  # (B, W)
    moved = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    moved = moved.permute(0, 3, 1, 2)
    side = int(h * cutout)
    cy = torch.randint(0, h - side + 1, (b,), generator=g).to(x.device)[:, None, None]
    cx = torch.randint(0, w - side + 1, (b,), generator=g).to(x.device)[:, None, None]
    yy, xx = torch.arange(h, device=x.device)[None, :, None], torch.arange(w, device=x.device)[None, None, :]
    hole = (yy >= cy) & (yy < cy + side) & (xx >= cx) & (xx < cx + side)  # (B, H, W)
    return moved * (~hole)[:, None].to(moved.dtype)


def gan_step(generator: nn.Module, discriminator: nn.Module, real: torch.Tensor, z: torch.Tensor,
             opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
             real_labels: torch.Tensor | None = None,
             augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One DCGAN step on real images ``real`` ``[B, C, H, W]`` and noise ``z`` ``[B, noise_dim]``;
    returns the two losses (nats) and the discriminator's mean probability of "real" on each batch.
    A conditional pair (``n_classes > 0``) also takes the real images' classes ``real_labels`` ``[B]``;
    the generated images' classes are those encoded in ``z``. ``augment`` (e.g. :func:`diff_augment`)
    transforms every image the discriminator sees, real and generated."""
    aug = augment or (lambda x: x)
    fake = generator(z)  # G(z), (B, C, H, W)
    cond = () if real_labels is None else (getattr(generator, "module", generator).labels(z),)  # D(x) or D(x, y); DDP: .module
    d_real = discriminator(aug(real)) if real_labels is None else discriminator(aug(real), real_labels)  # logits (B,)
    d_fake = discriminator(aug(fake.detach()), *cond)
    # L_D = -mean log sigmoid(D(x)) - mean log(1 - sigmoid(D(G(z))))
    loss_d = losses.discriminator_loss(d_real, d_fake)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    # L_G = -mean log sigmoid(D(G(z)))   (non-saturating: strong gradients while D rejects G's images)
    loss_g = losses.generator_adversarial(discriminator(aug(fake), *cond))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(d_real.detach()).mean(), "d_fake": torch.sigmoid(d_fake.detach()).mean()}


def train_gan(generator: nn.Module, discriminator: nn.Module, images: torch.Tensor, config: TrainConfig,
              betas=DCGAN_BETAS, ema: EMA | None = None, labels: torch.Tensor | None = None,
              augment: bool = False) -> History:
    """:func:`gan_step` for ``config.steps`` steps on ``images`` ``[N, C, H, W]`` in [-1, 1] (a batch
    with replacement and fresh noise each step), Adam with ``config.lr`` and ``betas`` for both
    players. With ``ema`` (an :class:`kdlab.engine.EMA` of ``generator``) the averaged weights are
    updated after every step and saved with the training state; ``ema.model`` is then the generator
    to sample from (averaging smooths the steps' back-and-forth; whether it lowers FID depends on the
    run: ``data/README.md`` records both cases). A conditional pair
    (``n_classes > 0``) needs ``labels`` ``[N]``, the class of each image. ``augment=True`` shows the
    discriminator :func:`diff_augment`-ed images (for small training sets). History keys: ``loss_d``,
    ``loss_g``, ``d_real``, ``d_fake``."""
    check_images(images, generator)
    if (labels is None) != (generator.n_classes == 0) or discriminator.n_classes != generator.n_classes:
        raise ValueError(f"generator n_classes={generator.n_classes}, discriminator n_classes={discriminator.n_classes}, "
                         f"labels {'given' if labels is not None else 'not given'}: a conditional pair needs the same "
                         "n_classes on both and the images' labels")
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"labels must have shape [{len(images)}] (one per image), got {list(labels.shape)}")
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)
    modules = {"generator": generator, "discriminator": discriminator} | ({"ema": ema.model} if ema else {})
    trainer = Trainer(config, modules=modules, optimizers={"opt_g": opt_g, "opt_d": opt_d}, desc="GAN (adversarial)",
                      distributed=not augment,  # diff_augment draws per row of the batch it is given
                      run={"kind": "gan", "betas": list(betas), "generator": models.architecture(generator),
                           "discriminator": models.architecture(discriminator)}
                      | ({"ema_decay": ema.decay, "ema_warmup": ema.warmup} if ema else {})
                      | ({"augment": "diff_augment"} if augment else {}))
    if ema is not None:
        trainer.add_callback("on_step_end", lambda tr: ema.update(generator, tr.step))

    def step(s: int, g: torch.Generator):
        if labels is None:
            real, real_labels = sample_batch(images, config.batch_size, g), None  # (B, C, H, W), the global batch
        else:
            idx = torch.randint(len(images), (config.batch_size,), generator=g)
            real, real_labels = images[idx], labels[idx]
        z = generator.sample_noise(config.batch_size, g, device="cpu")  # (B, noise_dim), the global batch
        real, real_labels, z = (None if v is None else trainer.shard(v) for v in (real, real_labels, z))
        return gan_step(trainer.net("generator"), trainer.net("discriminator"), real, z, opt_g, opt_d, real_labels,
                        (lambda x: diff_augment(x, g)) if augment else None)

    return trainer.fit(step)


# ---------------------------------------------------------------------------- same-noise distillation
class Adversary:
    """The adversarial half of the joint loss: a discriminator ``D`` with its own Adam optimiser,
    trained as in :func:`gan_step` to tell real images from the student's, and the weight ``w`` of
    the student's term ``w * (-mean log sigmoid D(S(z)))``."""

    def __init__(self, discriminator: nn.Module, weight: float, lr: float, betas=DCGAN_BETAS):
        if weight < 0:
            raise ValueError(f"adversarial_weight={weight!r} is not valid; expected a value >= 0")
        self.discriminator, self.weight = discriminator, weight
        self.opt = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)

    def train_discriminator(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """One step of ``L_D`` on ``real`` and (detached) ``fake`` images; returns ``L_D``."""
        loss_d = losses.discriminator_loss(self.discriminator(real), self.discriminator(fake.detach()))
        self.opt.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt.step()
        return loss_d.detach()

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """``w * (-mean log sigmoid D(S(z)))``."""
        return self.weight * losses.generator_adversarial(self.discriminator(fake))


class FeatureTerm(nn.Module):
    """``weight * L_feature`` over named ``layers`` of student and teacher (same names, same
    resolutions), with ``kind`` one of ``hint``, ``attention``, ``gram``; hint and Gram compare
    the teacher's features with 1x1 adapters of the student's (:class:`kdlab.feature_losses.FeatureAdapters`,
    trained with the student). Build it with :meth:`for_models`."""

    def __init__(self, kind: str, channels: dict[str, tuple[int, int]], weight: float = 1.0):
        super().__init__()
        check_choice("feature_loss", kind, feature_losses.FEATURE_LOSSES)
        if not channels or weight < 0:
            raise ValueError(f"feature_loss={kind!r} needs at least one layer name and feature_weight >= 0, "
                             f"got layers={list(channels)!r}, feature_weight={weight!r}")
        self.kind, self.layers, self.weight = kind, list(channels), weight
        self.adapters = feature_losses.FeatureAdapters(channels)

    @classmethod
    def for_models(cls, kind: str, student: nn.Module, teacher: nn.Module, layers: Sequence[str],
                   weight: float = 1.0) -> "FeatureTerm":
        """Read each layer's channel counts from one probe pass of both generators."""
        if not list(layers):
            raise ValueError(f"feature_loss={kind!r} needs at least one layer name, got layers={list(layers)!r}")
        param = next(student.parameters())
        probe = student.sample_noise(2, torch.Generator().manual_seed(0)).to(param.dtype)
        channels = feature_losses.layer_channels(student, teacher.to(probe.device), layers, probe)
        return cls(kind, channels, weight).to(param.device, param.dtype)  # adapters where the student is

    def forward(self, student_feats: dict[str, torch.Tensor], teacher_feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The unweighted loss, mean over the layers (a scalar)."""
        return feature_losses.feature_distillation(self.kind, student_feats, teacher_feats, self.adapters,
                                                   attention_loss=kernels.attention_transfer)


class TeacherCache(nn.Module):
    """A frozen generator teacher whose images are remembered by noise: ``cache(z)`` runs the
    teacher once per distinct ``z`` (compared by value) and returns the stored images afterwards.

    Same-noise distillation with the same seed feeds every student the same noise, so a sweep over
    students pays for the teacher's forward pass once. Memory: ``steps * batch * C * H * W`` floats
    (800 steps of 64 digits: 161 MB). Only for the teacher's output: feature terms need its
    intermediate features, so :func:`distill` refuses a cache together with ``feature_loss``."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher, self.z_dim, self.n_classes, self.noise_dim = teacher, teacher.z_dim, teacher.n_classes, teacher.noise_dim
        self._images: dict[bytes, torch.Tensor] = {}

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # one device-to-host copy of the noise per step (B * z_dim numbers), to compare it by value
        raw = z.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
        key = hashlib.sha1(raw).digest() + f"{tuple(z.shape)}{z.dtype}".encode()
        if key not in self._images:
            self._images[key] = self.teacher(z)
        return self._images[key]

    def __len__(self) -> int:
        return len(self._images)


def distill_step(student: nn.Module, teacher: nn.Module, z: torch.Tensor, opt: torch.optim.Optimizer,
                 kind: str = "mse", real: torch.Tensor | None = None, adversary: Adversary | None = None,
                 features: FeatureTerm | None = None) -> dict[str, torch.Tensor]:
    """One same-noise step: teacher and student get the same noise ``z`` ``[B, z_dim]`` and the
    student (and the feature adapters, if they are in ``opt``) moves towards the teacher's images.
    ``kind``: ``"mse"`` or ``"l1"``; ``adversary`` (with real images ``real`` ``[B, C, H, W]``) adds the
    joint loss's adversarial term; ``features`` adds a feature term. Returns ``distill`` (the pixel
    term), ``loss`` (the total) and, when used, ``loss_d`` and ``feature``."""
    layers = features.layers if features is not None else []
    with torch.no_grad(), FeatureTap(teacher, layers) as tap_t:
        target = teacher(z)  # T(z), (B, C, H, W)
    with FeatureTap(student, layers) as tap_s:
        fake = student(z)  # S(z)
    # L = mean (S(z) - T(z))^2   ("mse")   or   mean |S(z) - T(z)|   ("l1")
    loss = distill = losses.output_distillation(fake, target, kind)
    out = {"distill": distill.detach()}
    if adversary is not None:  # joint: L += w * (-mean log sigmoid D(S(z))), D trained on real vs S(z) first
        out["loss_d"] = adversary.train_discriminator(real, fake)
        loss = loss + adversary.generator_loss(fake)
    if features is not None:  # L += lambda * L_feature(r(F_S), F_T), mean over the tapped layers
        feature = features(tap_s.features, tap_t.features)
        loss, out["feature"] = loss + features.weight * feature, feature.detach()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {**out, "loss": loss.detach()}


def parse_recipe(recipe: str) -> tuple[str, str | None]:
    """``"<output loss>[+<feature loss>]"`` -> ``(loss, feature_loss or None)``, e.g. ``"joint+gram"``
    -> ``("joint", "gram")``; output losses ``mse``, ``l1``, ``joint``; feature losses ``hint``,
    ``attention``, ``gram``. Raises ``ValueError`` naming the allowed values."""
    if not isinstance(recipe, str) or recipe.count("+") > 1 or recipe.endswith("+"):
        raise ValueError(f"recipe={recipe!r} is not valid; expected '<output loss>' or '<output loss>+<feature loss>'")
    loss, _, feature = recipe.partition("+")
    check_choice("recipe output loss", loss, RECIPE_LOSSES)
    if feature:
        check_choice("recipe feature loss", feature, feature_losses.FEATURE_LOSSES)
    return loss, feature or None


def is_recipe(recipe) -> bool:
    """a recipe '<mse|l1|joint>[+<hint|attention|gram>]'"""
    try:
        parse_recipe(recipe)
    except ValueError:
        return False
    return True


def distill(student: nn.Module, teacher: nn.Module, config: TrainConfig, recipe: str = "mse", *,
            discriminator: nn.Module | None = None, real_images: torch.Tensor | None = None,
            adversarial_weight: float = 0.01, layers: Sequence[str] = (), feature_weight: float = 1.0,
            betas=DCGAN_BETAS) -> History:
    """:func:`distill_step` for ``config.steps`` steps, fresh noise ``z ~ N(0, I)`` each step, Adam on
    the student (and adapters) with ``config.lr`` and ``betas``.

    ``recipe`` (:func:`parse_recipe`): ``"mse"``, ``"l1"``, ``"joint"`` (needs ``discriminator`` and
    ``real_images`` ``[N, C, H, W]``, weight ``adversarial_weight``), optionally ``+hint``,
    ``+attention`` or ``+gram`` on ``layers`` with weight ``feature_weight``. ``teacher`` is frozen
    (eval mode, no gradients); it may be a :class:`TeacherCache` when there is no feature term."""
    loss, feature_loss = parse_recipe(recipe)
    if (student.z_dim, student.n_classes) != (teacher.z_dim, teacher.n_classes):
        raise ValueError(f"student (z_dim={student.z_dim}, n_classes={student.n_classes}) differs from teacher "
                         f"(z_dim={teacher.z_dim}, n_classes={teacher.n_classes}); shared-noise distillation needs "
                         "the same noise space")
    if loss == "joint" and (discriminator is None or real_images is None):
        raise ValueError("recipe 'joint' needs a discriminator and real_images (the adversarial term)")
    base = teacher.teacher if isinstance(teacher, TeacherCache) else teacher
    if feature_loss and config.precision != "fp32":
        raise ValueError(f"precision={config.precision!r} with a feature term is not supported (the feature taps find "
                         "the student's layers by name); use precision='fp32'")
    if feature_loss and base is not teacher:
        raise ValueError("a TeacherCache holds only the teacher's images; feature terms need the teacher itself")
    modules = {"student": student}
    freeze(base, config.device)
    student.to(next(base.parameters()).device)
    features = FeatureTerm.for_models(feature_loss, student, base, layers, feature_weight) if feature_loss else None
    if features is not None:
        modules["adapters"] = features
    opt = torch.optim.Adam([p for m in modules.values() for p in m.parameters()], lr=config.lr, betas=betas)
    adversary = None
    if loss == "joint":
        check_images(real_images, student, "real_images")
        adversary = Adversary(discriminator, adversarial_weight, config.lr, betas)
        modules["discriminator"] = discriminator
    optimizers = {"opt": opt, **({"opt_d": adversary.opt} if adversary else {})}
    run = {"kind": f"distill-{loss}", "betas": list(betas), "student": models.architecture(student),
           "teacher": models.architecture(base), "adversarial_weight": adversarial_weight if adversary else None,
           "feature": [feature_loss, list(layers), feature_weight] if feature_loss else None}
    trainer = Trainer(config, modules=modules, optimizers=optimizers, run=run, desc=f"distill ({recipe})",
                      distributed=features is None)  # feature taps find layers by name, which DDP's wrapper changes
    kind = "mse" if loss == "joint" else loss
    if adversary is not None:
        adversary.discriminator = trainer.net("discriminator")

    def step(s: int, g: torch.Generator):
        z = student.sample_noise(config.batch_size, g, device="cpu")  # (B, noise_dim); z first, then any classes
        real = sample_batch(real_images, config.batch_size, g) if adversary else None
        return distill_step(trainer.net("student"), teacher, trainer.shard(z), opt, kind,
                            None if real is None else trainer.shard(real), adversary, features)

    return trainer.fit(step)
