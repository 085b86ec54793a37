"""PixelCNN teachers and their KL distillation (notebooks 01 and 03).

- :func:`mle_step` / :func:`train_pixelcnn`: maximum likelihood, i.e. the per-pixel cross-entropy
  ``-log p(x) / D`` of images quantised to the model's K levels;
- :func:`kl_step` / :func:`distill_pixelcnn`: KL distillation by teacher forcing. Teacher and
  student see the same image ``x`` and give every pixel's conditional ``p(x_i | x_<i)`` in one
  pass; by the chain rule the sum of the per-pixel KLs, averaged over contexts ``x`` drawn from
  the teacher, is the KL between the image distributions (notebook 03 derives it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels, losses, models
from ..data import quantize
from ..engine import History, Trainer, TrainConfig, check_images, freeze, sample_batch, step_generator
from ..utils import check_choice, check_int, progress_bar


def mle_step(model: nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """One maximum-likelihood step on levels ``x`` ``[B, 1, H, W]`` (int64 in 0..K-1); returns the
    batch's ``bits_per_dim`` before the step."""
    # -log p(x) / D = mean over pixels of cross-entropy(logits_i, x_i)   (nats per pixel)
    nll = F.cross_entropy(model(x), x[:, 0])
    opt.zero_grad(set_to_none=True)
    nll.backward()
    opt.step()
    return {"bits_per_dim": nll.detach() / math.log(2)}


def train_pixelcnn(model: nn.Module, images: torch.Tensor, config: TrainConfig,
                   desc: str = "PixelCNN (maximum likelihood)") -> History:
    """:func:`mle_step` for ``config.steps`` steps on ``images`` ``[N, 1, H, W]`` in [-1, 1] (quantised
    to ``model.levels``), Adam with ``config.lr``. ``desc`` labels the progress bar and messages
    (which model this is: a teacher, a data-only student). History key ``bits_per_dim``."""
    check_images(images, model)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    trainer = Trainer(config, modules={"model": model}, optimizers={"opt": opt}, desc=desc,
                      run={"kind": "pixelcnn", "model": models.architecture(model)}, distributed=True)

    def step(s: int, g: torch.Generator):
        x = quantize(sample_batch(images, config.batch_size, g), model.levels)  # (B, 1, H, W), the global batch
        return mle_step(trainer.net("model"), trainer.shard(x), opt)

    return trainer.fit(step)


@torch.no_grad()
def image_bits_per_dim(model: nn.Module, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Bits/dim of each image, ``[N]`` float64 on the CPU, for a PixelCNN on ``images`` ``[N, 1, H, W]``
    in [-1, 1] (quantised to its levels), computed where the model is. Its mean is
    :func:`bits_per_dim`; ``kdlab.evaluation.intervals.mean_interval`` gives the mean's interval."""
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([model.bits_per_dim(quantize(images[i:i + batch_size], model.levels).to(dev)).double().cpu()
                      for i in range(0, len(images), batch_size)])


def bits_per_dim(model: nn.Module, images: torch.Tensor, batch_size: int = 250) -> float:
    """Mean bits/dim of a PixelCNN on ``images`` ``[N, 1, H, W]`` in [-1, 1] (quantised to its levels),
    computed where the model is."""
    return image_bits_per_dim(model, images, batch_size).mean().item()


@torch.no_grad()
def teacher_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 250, dtype=torch.float16,
                   progress: bool = True) -> torch.Tensor:
    """Teacher forcing once over a dataset: logits ``[N, K, H, W]`` (on the CPU, in ``dtype``) of a
    PixelCNN for ``images`` ``[N, 1, H, W]`` in [-1, 1]. Caching them makes each distillation step
    one student pass instead of student + teacher; 4,500 MNIST images at K = 16 take 113 MB in
    float16 (logits of magnitude <= 30 keep about 3 significant digits, far below the KL's scale)."""
    check_int("batch_size", batch_size)
    check_images(images, model)
    model.eval()
    dev = next(model.parameters()).device
    out = torch.empty(len(images), model.levels, *images.shape[2:], dtype=dtype)
    for i in progress_bar(range(0, len(images), batch_size), desc="teacher logits", disable=not progress, leave=False):
        out[i:i + batch_size] = model(quantize(images[i:i + batch_size], model.levels).to(dev)).to("cpu", dtype)
    return out


def kl_step(student: nn.Module, x: torch.Tensor, target_logits: torch.Tensor, opt: torch.optim.Optimizer,
            temperature: float = 1.0, direction: str = "forward") -> dict[str, torch.Tensor]:
    """One teacher-forced KL step on contexts ``x`` ``[B, 1, H, W]`` (levels) with the teacher's logits
    on the same ``x``, ``target_logits`` ``[B, K, H, W]``. Returns ``kl`` (the loss) and the batch's
    ``bits_per_dim`` under the student (its maximum-likelihood loss, for comparison)."""
    logits = student(x)  # every pixel's q(x_i | x_<i) in one pass, (B, K, H, W)
    target_logits = target_logits.to(logits.dtype)  # cached float16 logits: the fused kernel wants one dtype
    # loss = T^2 * mean over pixels of KL(softmax(z_T / T) || softmax(z_S / T))   ("reverse": KL(q || p))
    loss = kernels.kl_distillation(logits, target_logits, temperature, direction)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"kl": loss.detach(), "bits_per_dim": F.cross_entropy(logits.detach().float(), x[:, 0]) / math.log(2)}


class SamplePool(nn.Module):
    """Student samples ``images`` ``[n, 1, H, W]`` (levels) and the teacher's logits on them
    ``[n, K, H, W]``: the contexts of on-policy distillation. Buffers, so a training state saves them."""

    def __init__(self, n: int, levels: int, size: int):
        super().__init__()
        self.register_buffer("images", torch.zeros(n, 1, size, size, dtype=torch.long))
        self.register_buffer("teacher_logits", torch.zeros(n, levels, size, size))

    @torch.no_grad()
    def refill(self, student: nn.Module, teacher: nn.Module, g: torch.Generator) -> None:
        self.images.copy_(student.sample(len(self.images), generator=g, progress=False))
        self.teacher_logits.copy_(teacher(self.images).float())


def distill_pixelcnn(student: nn.Module, teacher: nn.Module, images: torch.Tensor, config: TrainConfig, *,
                     temperature: float = 1.0, direction: str = "forward", context: str = "data",
                     cached_logits: torch.Tensor | None = None, pool_size: int = 64,
                     refresh_every: int = 50) -> History:
    """:func:`kl_step` for ``config.steps`` steps, Adam with ``config.lr``. Contexts:

    - ``context="data"``: training ``images`` ``[N, 1, H, W]`` in [-1, 1] (the batch draw of
      :func:`train_pixelcnn`), standing in for teacher samples: the forward loss then estimates
      KL(p_T || p_S) per pixel. ``cached_logits`` (from :func:`teacher_logits`, aligned with
      ``images``) skips the teacher's pass;
    - ``context="student"``: the student's own samples (a :class:`SamplePool` of ``pool_size``
      images redrawn every ``refresh_every`` steps), so the reverse loss estimates KL(p_S || p_T).
      Samples are discrete, so no gradient flows through the sampling: the score-function term of
      the exact gradient is left out (on-policy distillation).

    History keys: ``kl`` and ``bits_per_dim`` (of the batch under the student).
    """
    check_choice("direction", direction, losses.DIRECTIONS)
    check_choice("context", context, ("data", "student"))
    temperature = losses.check_temperature(temperature)
    for name in ("levels", "img_size"):
        if student.config[name] != teacher.config[name]:
            raise ValueError(f"student {name}={student.config[name]} differs from teacher {name}="
                             f"{teacher.config[name]}; distillation needs the same pixels and levels")
    check_images(images, student)
    if cached_logits is not None and (cached_logits.shape[0] != len(images) or cached_logits.shape[1:] !=
                                      (teacher.levels, *images.shape[2:])):
        raise ValueError(f"cached_logits has shape {list(cached_logits.shape)}; expected "
                         f"{[len(images), teacher.levels, *images.shape[2:]]} (teacher_logits(teacher, images))")
    freeze(teacher, config.device)
    opt = torch.optim.Adam(student.parameters(), lr=config.lr)
    modules = {"student": student}
    if context == "student":
        check_int("pool_size", pool_size)
        check_int("refresh_every", refresh_every)
        modules["pool"] = pool = SamplePool(pool_size, teacher.levels, teacher.img_size)
    run = {"kind": "distill-pixelcnn", "temperature": temperature, "direction": direction, "context": context,
           "pool": [pool_size, refresh_every] if context == "student" else None,
           "student": models.architecture(student), "teacher": models.architecture(teacher)}
    trainer = Trainer(config, modules=modules, optimizers={"opt": opt}, run=run,
                      desc=f"distill ({direction} KL, T={temperature:g}, {context})", distributed=True)
    if context == "student":  # redraw the pool before the step that needs it (also right after a resume)
        trainer.add_callback("on_step_start", lambda tr: tr.step % refresh_every == 0 and pool.refill(
            student, teacher, step_generator(config.seed + 7919, tr.step)))

    def step(s: int, g: torch.Generator):
        idx = torch.randint(pool_size if context == "student" else len(images), (config.batch_size,), generator=g)
        idx = trainer.shard(idx, to_device=False)  # this process's rows of the global batch, indices on the CPU
        if context == "student":
            local = idx.to(trainer.device)  # the pool lives on the training device
            x, target = pool.images[local], pool.teacher_logits[local]
        else:
            x = quantize(images[idx].to(trainer.device), student.levels)  # (B, 1, H, W) levels
            with torch.no_grad():
                target = cached_logits[idx].to(trainer.device) if cached_logits is not None else teacher(x)
        return kl_step(trainer.net("student"), x, target, opt, temperature, direction)

    return trainer.fit(step)
