"""Training loops: teachers (adversarial DCGAN, maximum-likelihood PixelCNN, the FID classifier) and
students (same-noise output and feature distillation of GANs, KL distillation of PixelCNNs).

Shared rules, implemented once in :func:`run_loop`:

- progress bar (``tqdm.auto``: a widget in Jupyter; plain text with ``KDLAB_PROGRESS=text``, which
  ``make tutorial`` and the tests set for headless runs);
- determinism: step ``s`` draws its batch and noise from a generator seeded with ``(seed, s)``, so
  the same seed gives the same weights on CPU, and a resumed run equals an uninterrupted one;
- a non-finite loss stops training with :class:`TrainingDiverged` and removes the run's training
  state, so nothing from a diverged run is left to be loaded;
- with ``state_path`` set, the full training state (weights, optimiser moments, step, history) is
  saved every ``checkpoint_every`` steps, at the end, and when interrupted (Ctrl-C or Jupyter's
  stop button: the current step finishes first); calling the function again with the same
  arguments resumes from it (more ``steps`` continues training).
"""
from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from . import checkpoints, feature_losses, losses, models
from .data import quantize
from .taps import FeatureTap
from .utils import check_choice, check_int, get_device, progress_bar

History = dict[str, list[float]]


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator for one training step: batches and noise depend only on (seed, step)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _save_state(path, step: int, history: History, run: dict, modules: dict[str, nn.Module],
                optimizers: dict[str, torch.optim.Optimizer]) -> None:
    tensors, groups = {}, {}
    for name, m in modules.items():
        tensors.update({f"{name}.model.{k}": v for k, v in m.state_dict().items()})
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        for idx, st in sd["state"].items():
            tensors.update({f"{name}.optim.{idx}.{k}": torch.as_tensor(v) for k, v in st.items()})
        groups[name] = sd["param_groups"]
    checkpoints.save_tensors(path, tensors, {"kind": "training-state", "step": step, "history": history,
                                             "run": run, "param_groups": groups})


def _load_state(path, run: dict, modules, optimizers) -> tuple[int, History]:
    tensors, meta = checkpoints.load_tensors(path)
    if meta.get("kind") != "training-state":
        raise checkpoints.CheckpointError(path, "is a model checkpoint, not a training state")
    if meta.get("run") != checkpoints._jsonable(run):
        raise checkpoints.CheckpointError(
            path, f"belongs to a different run ({meta.get('run')} vs now {checkpoints._jsonable(run)}); "
                  "delete it or choose another output folder to start afresh")
    for name, m in modules.items():
        prefix = f"{name}.model."
        checkpoints.load_state(m, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, path)
    for name, opt in optimizers.items():
        state: dict = {}
        prefix = f"{name}.optim."
        for k, v in tensors.items():
            if k.startswith(prefix):
                idx, key = k[len(prefix):].split(".", 1)
                state.setdefault(int(idx), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
    return int(meta["step"]), {k: list(v) for k, v in meta["history"].items()}


class _DeferredInterrupt:
    """While active, Ctrl-C / Jupyter's stop button (SIGINT) only sets ``requested``; the loop
    checks it between steps, so an interrupt never lands halfway through an optimiser update.
    Outside the main thread signals cannot be caught and this does nothing."""

    def __init__(self):
        self.requested, self._previous = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run_loop(step_fn: Callable[[int, torch.Generator], dict[str, float]], *, steps: int, seed: int,
             modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer], run: dict,
             state_path=None, checkpoint_every: int = 250, progress: bool = True, desc: str = "train") -> History:
    """Call ``step_fn(step, generator) -> {metric: float}`` for steps ``0 .. steps - 1`` (resuming
    from ``state_path`` if it holds an earlier run with the same ``run`` description) and return the
    history ``{metric: [value per step]}`` (plus ``"step"``).

    An interrupt (SIGINT) is honoured between steps: the state after the last complete step is
    saved and ``KeyboardInterrupt`` is raised.
    """
    check_int("steps", steps, 0)
    check_int("checkpoint_every", checkpoint_every, 1)
    start, history = 0, {}
    state_path = Path(state_path) if state_path else None
    if state_path is not None and state_path.exists():
        start, history = _load_state(state_path, run, modules, optimizers)
        if start >= steps:
            print(f"{desc}: {state_path} already holds {start} trained steps (asked for {steps}); loaded it, "
                  "nothing to train")
            for m in modules.values():
                m.eval()
            return history
    save = (lambda s: _save_state(state_path, s, history, run, modules, optimizers)) if state_path else (lambda s: None)
    for m in modules.values():
        m.train()
    bar = progress_bar(range(start, steps), initial=start, total=steps, desc=desc, disable=not progress)
    with _DeferredInterrupt() as interrupt:
        try:
            for step in bar:
                metrics = step_fn(step, step_generator(seed, step))
                bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
                if bad:
                    if state_path is not None and state_path.exists():
                        state_path.unlink()
                    raise TrainingDiverged(
                        f"{desc}: non-finite loss at step {step}: {bad}. Training stopped and nothing was saved"
                        f"{f' (training state {state_path} removed)' if state_path else ''}. Lower the learning "
                        f"rate (lr={run.get('lr')}) or check the data, then rerun.")
                history.setdefault("step", []).append(step)
                for k, v in metrics.items():
                    history.setdefault(k, []).append(v)
                if step % 10 == 0 or step == steps - 1:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
                if (step + 1) % checkpoint_every == 0 or interrupt.requested:
                    save(step + 1)
                if interrupt.requested:
                    where = (f"; training state saved after step {step + 1} in {state_path}: rerun to resume"
                             if state_path else "")
                    print(f"{desc}: interrupted{where}")
                    raise KeyboardInterrupt
        finally:
            bar.close()
    save(steps)
    for m in modules.values():
        m.eval()
    return history


def _check_images(images: torch.Tensor, model: nn.Module) -> None:
    cfg = model.config
    want = (cfg["channels"], cfg["img_size"], cfg["img_size"])
    if images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(f"images have shape {list(images.shape)} but {type(model).__name__} expects "
                         f"[N, {want[0]}, {want[1]}, {want[2]}] (its config: {cfg})")


def _batch(images: torch.Tensor, batch_size: int, g: torch.Generator, device) -> torch.Tensor:
    idx = torch.randint(len(images), (batch_size,), generator=g)  # sampling with replacement
    return images[idx].to(device)


def train_gan(generator: nn.Module, discriminator: nn.Module, images: torch.Tensor, *, steps: int,
              batch_size: int = 64, lr: float = 2e-4, betas=(0.5, 0.999), seed: int = 0, device="auto",
              state_path=None, checkpoint_every: int = 250, progress: bool = True) -> History:
    """Adversarial training (non-saturating GAN loss, DCGAN optimiser settings).

    ``images``: real data ``[N, C, H, W]`` in [-1, 1]. Per step, with ``D`` returning logits,

        L_D = BCE(D(x), 1) + BCE(D(G(z)), 0),     L_G = BCE(D(G(z)), 1),   z ~ N(0, I).

    History keys: ``loss_d``, ``loss_g`` (nats), ``d_real``, ``d_fake`` (mean D probability).
    """
    check_int("batch_size", batch_size)
    _check_images(images, generator)
    dev = get_device(device)
    generator.to(dev), discriminator.to(dev)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    bce = F.binary_cross_entropy_with_logits

    def step_fn(step: int, g: torch.Generator) -> dict[str, float]:
        real = _batch(images, batch_size, g, dev)  # (B, C, H, W)
        z = torch.randn(batch_size, generator.z_dim, generator=g).to(dev)  # (B, z_dim)
        fake = generator(z)
        d_real, d_fake = discriminator(real), discriminator(fake.detach())  # logits (B,)
        loss_d = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        _minimise(opt_d, loss_d)
        d_gen = discriminator(fake)
        loss_g = bce(d_gen, torch.ones_like(d_gen))
        _minimise(opt_g, loss_g)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(),
                "d_real": torch.sigmoid(d_real).mean().item(), "d_fake": torch.sigmoid(d_fake).mean().item()}

    run = {"kind": "gan", "seed": seed, "batch_size": batch_size, "lr": lr, "betas": list(betas),
           "generator": models.architecture(generator), "discriminator": models.architecture(discriminator)}
    return run_loop(step_fn, steps=steps, seed=seed, modules={"generator": generator, "discriminator": discriminator},
                    optimizers={"opt_g": opt_g, "opt_d": opt_d}, run=run, state_path=state_path,
                    checkpoint_every=checkpoint_every, progress=progress, desc="GAN teacher")


def freeze(teacher: nn.Module, device) -> nn.Module:
    """Move a teacher to ``device``, put it in eval mode and stop gradients to its parameters."""
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _minimise(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _fit(model: nn.Module, images: torch.Tensor, step_loss, *, kind: str, desc: str, steps: int, batch_size: int,
         lr: float, seed: int, device, state_path, checkpoint_every: int, progress: bool) -> History:
    """One model, one Adam optimiser: each step minimises ``step_loss(g, device) -> (loss, metrics)``."""
    check_int("batch_size", batch_size)
    _check_images(images, model)
    dev = get_device(device)
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step_fn(step: int, g: torch.Generator) -> dict[str, float]:
        loss, metrics = step_loss(g, dev)
        _minimise(opt, loss)
        return metrics

    run = {"kind": kind, "seed": seed, "batch_size": batch_size, "lr": lr, "model": models.architecture(model)}
    return run_loop(step_fn, steps=steps, seed=seed, modules={"model": model}, optimizers={"opt": opt}, run=run,
                    state_path=state_path, checkpoint_every=checkpoint_every, progress=progress, desc=desc)


def train_pixelcnn(model: nn.Module, images: torch.Tensor, *, steps: int, batch_size: int = 32, lr: float = 1e-3,
                   seed: int = 0, device="auto", state_path=None, checkpoint_every: int = 250,
                   progress: bool = True) -> History:
    """Maximum likelihood: minimise ``-log p(x) / D`` (per-pixel cross-entropy) on ``images``
    ``[N, 1, H, W]`` in [-1, 1], quantised to ``model.levels`` levels. History key ``bits_per_dim``."""
    def step_loss(g: torch.Generator, dev):
        x = quantize(_batch(images, batch_size, g, dev), model.levels)  # (B, 1, H, W) int64
        nll = F.cross_entropy(model(x), x[:, 0])  # nats per pixel
        return nll, {"bits_per_dim": nll.item() / math.log(2)}

    return _fit(model, images, step_loss, kind="pixelcnn", desc="PixelCNN teacher", steps=steps,
                batch_size=batch_size, lr=lr, seed=seed, device=device, state_path=state_path,
                checkpoint_every=checkpoint_every, progress=progress)


@torch.no_grad()
def bits_per_dim(model: nn.Module, images: torch.Tensor, batch_size: int = 250, device=None) -> float:
    """Mean bits/dim of a PixelCNN on ``images`` ``[N, 1, H, W]`` in [-1, 1] (quantised to its levels)."""
    model.eval()
    dev = device or next(model.parameters()).device
    total = 0.0
    for i in range(0, len(images), batch_size):
        x = quantize(images[i:i + batch_size], model.levels).to(dev)
        total += model.bits_per_dim(x).sum().item()
    return total / len(images)


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, steps: int, batch_size: int = 64,
                     lr: float = 1e-3, seed: int = 0, device="auto", state_path=None, checkpoint_every: int = 250,
                     progress: bool = True) -> History:
    """Cross-entropy training of a classifier on ``images`` ``[N, C, H, W]`` and integer ``labels``
    ``[N]``, each batch shifted by up to 2 pixels at random (augmentation). History keys ``loss``
    (nats) and ``accuracy`` (on the training batch)."""
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    def step_loss(g: torch.Generator, dev):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
        x = torch.roll(images[idx], shifts=(dy, dx), dims=(2, 3)).to(dev)  # (B, C, H, W), shifted digits
        y = labels[idx].to(dev)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}

    return _fit(model, images, step_loss, kind="classifier", desc="classifier", steps=steps, batch_size=batch_size,
                lr=lr, seed=seed, device=device, state_path=state_path, checkpoint_every=checkpoint_every,
                progress=progress)


def distill_gan(student: nn.Module, teacher: nn.Module, *, steps: int, loss: str = "mse", batch_size: int = 64,
                lr: float = 2e-4, betas=(0.5, 0.999), discriminator: nn.Module | None = None,
                real_images: torch.Tensor | None = None, adversarial_weight: float = 0.01,
                feature_loss: str | None = None, layers: Sequence[str] = (), feature_weight: float = 1.0,
                seed: int = 0, device="auto", state_path=None, checkpoint_every: int = 250,
                progress: bool = True) -> History:
    """Output distillation with shared noise: every step draws ``z ~ N(0, I)`` ``[B, z_dim]``, the
    teacher (moved to ``device``, put in eval mode, parameters frozen with requires_grad=False) makes ``T(z)`` and the
    student is trained on

        "mse":   mean (S(z) - T(z))^2          "l1": mean |S(z) - T(z)|
        "joint": mean (S(z) - T(z))^2 + w * (-mean log sigmoid(D(S(z))))   (Aguinaldo et al. 2019)

    For ``"joint"``, ``discriminator`` is trained alongside to tell ``real_images`` ``[N, C, H, W]``
    from student images. ``feature_loss`` (``"hint"``, ``"attention"`` or ``"gram"``, see
    :mod:`kdlab.feature_losses`) adds ``feature_weight * L_feature`` over the named ``layers``
    (same names and resolutions in both models); hint and Gram terms train 1x1 adapters alongside
    the student (saved in the training state). History keys: ``distill`` (the pixel term),
    ``loss`` (the student's total) and, when used, ``loss_d`` and ``feature``.
    """
    check_int("batch_size", batch_size)
    losses.check_choice("loss", loss, losses.OUTPUT_LOSSES + ("joint",))
    if student.z_dim != teacher.z_dim:
        raise ValueError(f"student z_dim={student.z_dim} differs from teacher z_dim={teacher.z_dim}; "
                         "shared-noise distillation needs the same noise space")
    if adversarial_weight < 0:
        raise ValueError(f"adversarial_weight={adversarial_weight!r} is not valid; expected a value >= 0")
    if loss == "joint" and (discriminator is None or real_images is None):
        raise ValueError("loss='joint' needs a discriminator and real_images (the adversarial term)")
    dev = get_device(device)
    student.to(dev)
    freeze(teacher, dev)
    modules, params = {"student": student}, list(student.parameters())
    if feature_loss is not None:
        check_choice("feature_loss", feature_loss, feature_losses.FEATURE_LOSSES)
        layers = list(layers)
        if not layers or feature_weight < 0:
            raise ValueError(f"feature_loss={feature_loss!r} needs at least one layer name and feature_weight >= 0, "
                             f"got layers={layers!r}, feature_weight={feature_weight!r}")
        probe = torch.zeros(2, student.z_dim, device=dev)
        modules["adapters"] = adapters = feature_losses.FeatureAdapters(
            feature_losses.layer_channels(student, teacher, layers, probe)).to(dev)
        params += list(adapters.parameters())
    opt = torch.optim.Adam(params, lr=lr, betas=betas)
    optimizers = {"opt": opt}
    if loss == "joint":
        _check_images(real_images, student)
        discriminator.to(dev)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
        modules["discriminator"], optimizers["opt_d"] = discriminator, opt_d
    kind = "mse" if loss == "joint" else loss

    def step_fn(step: int, g: torch.Generator) -> dict[str, float]:
        z = torch.randn(batch_size, student.z_dim, generator=g).to(dev)  # (B, z_dim), shared by both
        with FeatureTap(teacher, layers if feature_loss else []) as tap_t, torch.no_grad():
            target = teacher(z)  # (B, C, H, W)
        with FeatureTap(student, layers if feature_loss else []) as tap_s:
            fake = student(z)
        out = {}
        if loss == "joint":
            real = _batch(real_images, batch_size, g, dev)
            loss_d = losses.discriminator_loss(discriminator(real), discriminator(fake.detach()))
            _minimise(opt_d, loss_d)
            distill = losses.output_distillation(fake, target, kind)
            total = distill + adversarial_weight * losses.generator_adversarial(discriminator(fake))
            out["loss_d"] = loss_d.item()
        else:
            total = distill = losses.output_distillation(fake, target, kind)
        if feature_loss is not None:
            feature = feature_losses.feature_distillation(feature_loss, tap_s.features, tap_t.features, adapters)
            total = total + feature_weight * feature
            out["feature"] = feature.item()
        _minimise(opt, total)
        return {"distill": distill.item(), "loss": total.item(), **out}

    run = {"kind": f"distill-{loss}", "seed": seed, "batch_size": batch_size, "lr": lr, "betas": list(betas),
           "student": models.architecture(student), "teacher": models.architecture(teacher),
           "adversarial_weight": adversarial_weight if loss == "joint" else None,
           "feature": [feature_loss, list(layers), feature_weight] if feature_loss else None}
    return run_loop(step_fn, steps=steps, seed=seed, modules=modules, optimizers=optimizers, run=run,
                    state_path=state_path, checkpoint_every=checkpoint_every, progress=progress,
                    desc=f"distill ({loss}{' + ' + feature_loss if feature_loss else ''})")


def parse_recipe(recipe: str) -> tuple[str, str | None]:
    """``"<output loss>[+<feature loss>]"`` -> ``(loss, feature_loss or None)``, e.g. ``"joint+gram"``
    -> ``("joint", "gram")``; output losses ``mse``, ``l1``, ``joint``; feature losses ``hint``,
    ``attention``, ``gram``. Raises ``ValueError`` naming the allowed values."""
    if not isinstance(recipe, str) or recipe.count("+") > 1 or recipe.endswith("+"):
        raise ValueError(f"recipe={recipe!r} is not valid; expected '<output loss>' or '<output loss>+<feature loss>'")
    loss, _, feature = recipe.partition("+")
    check_choice("recipe output loss", loss, losses.OUTPUT_LOSSES + ("joint",))
    if feature:
        check_choice("recipe feature loss", feature, feature_losses.FEATURE_LOSSES)
    return loss, feature or None


def distill_recipe(student: nn.Module, teacher: nn.Module, recipe: str, *, layers: Sequence[str] = (),
                   feature_weight: float = 1.0, **kwargs) -> History:
    """:func:`distill_gan` with the loss written as a recipe string (:func:`parse_recipe`): ``"mse"``,
    ``"joint"``, ``"mse+gram"``, ``"joint+attention"``... ``layers`` and ``feature_weight`` apply
    only when the recipe has a feature term; other keyword arguments go to :func:`distill_gan`."""
    loss, feature = parse_recipe(recipe)
    extra = dict(feature_loss=feature, layers=layers, feature_weight=feature_weight) if feature else {}
    return distill_gan(student, teacher, loss=loss, **kwargs, **extra)


@torch.no_grad()
def pixelcnn_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 250, dtype=torch.float16,
                    device=None, progress: bool = True) -> torch.Tensor:
    """Teacher forcing once over a dataset: logits ``[N, K, H, W]`` (on the CPU, in ``dtype``) of a
    PixelCNN for ``images`` ``[N, 1, H, W]`` in [-1, 1]. Caching them makes each distillation step
    one student pass instead of student + teacher; 4,500 MNIST images at K = 16 take 113 MB in
    float16 (logits of magnitude <= 30 keep about 3 significant digits, far below the KL's scale)."""
    check_int("batch_size", batch_size)
    _check_images(images, model)
    model.eval()
    dev = device or next(model.parameters()).device
    out = torch.empty(len(images), model.levels, *images.shape[2:], dtype=dtype)
    for i in progress_bar(range(0, len(images), batch_size), desc="teacher logits", disable=not progress, leave=False):
        out[i:i + batch_size] = model(quantize(images[i:i + batch_size], model.levels).to(dev)).to("cpu", dtype)
    return out


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


def distill_pixelcnn(student: nn.Module, teacher: nn.Module, images: torch.Tensor, *, steps: int,
                     temperature: float = 1.0, direction: str = "forward", context: str = "data",
                     teacher_logits: torch.Tensor | None = None, batch_size: int = 32, lr: float = 1e-3,
                     pool_size: int = 64, refresh_every: int = 50, seed: int = 0, device="auto", state_path=None,
                     checkpoint_every: int = 250, progress: bool = True) -> History:
    """KL distillation of an autoregressive teacher by teacher forcing. Each step takes images ``x``
    ``[B, 1, H, W]`` (the context), runs teacher and student on the same ``x`` (every pixel's
    conditional ``p(x_i | x_<i)`` in one pass) and minimises

        loss = T^2 * mean over pixels of KL(softmax(z_T / T) || softmax(z_S / T))   ("forward";
               "reverse" swaps the arguments)  -- kd.losses.kl_distillation

    By the chain rule, summed over pixels and averaged over contexts ``x ~ p``, the T = 1 forward
    loss is KL(p_T || p_S) over whole images when ``x`` follows the teacher; here

    - ``context="data"``: ``x`` are training ``images`` (in [-1, 1], same batch draw as
      :func:`train_pixelcnn`), standing in for teacher samples; ``teacher_logits`` (from
      :func:`pixelcnn_logits`, aligned with ``images``) skips the teacher pass;
    - ``context="student"``: ``x`` are the student's own samples (a :class:`SamplePool` of
      ``pool_size`` images redrawn every ``refresh_every`` steps), so the reverse loss estimates
      KL(p_S || p_T). Samples are discrete, so no gradient flows through the sampling: the
      score-function term of the exact gradient is left out (on-policy distillation).

    History keys: ``kl`` (the loss) and, for data context, ``bits_per_dim`` of the batch under the
    student (the maximum-likelihood loss of :func:`train_pixelcnn`, for comparison).
    """
    check_int("batch_size", batch_size)
    check_choice("direction", direction, losses.DIRECTIONS)
    check_choice("context", context, ("data", "student"))
    for name in ("levels", "img_size"):
        if student.config[name] != teacher.config[name]:
            raise ValueError(f"student {name}={student.config[name]} differs from teacher {name}="
                             f"{teacher.config[name]}; distillation needs the same pixels and levels")
    _check_images(images, student)
    if teacher_logits is not None and (teacher_logits.shape[0] != len(images) or teacher_logits.shape[1:] !=
                                       (teacher.levels, *images.shape[2:])):
        raise ValueError(f"teacher_logits has shape {list(teacher_logits.shape)}; expected "
                         f"{[len(images), teacher.levels, *images.shape[2:]]} (pixelcnn_logits(teacher, images))")
    dev = get_device(device)
    student.to(dev)
    freeze(teacher, dev)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    modules = {"student": student}
    if context == "student":
        check_int("pool_size", pool_size)
        check_int("refresh_every", refresh_every)
        modules["pool"] = pool = SamplePool(pool_size, teacher.levels, teacher.img_size).to(dev)

    def step_fn(step: int, g: torch.Generator) -> dict[str, float]:
        if context == "student":
            if step % refresh_every == 0:
                pool.refill(student, teacher, step_generator(seed + 7919, step))
            idx = torch.randint(pool_size, (batch_size,), generator=g)
            x, target = pool.images[idx.to(dev)], pool.teacher_logits[idx.to(dev)]
        else:
            idx = torch.randint(len(images), (batch_size,), generator=g)  # the draw of train_pixelcnn
            x = quantize(images[idx].to(dev), student.levels)  # (B, 1, H, W) levels
            if teacher_logits is not None:
                target = teacher_logits[idx].to(dev)
            else:
                with torch.no_grad():
                    target = teacher(x)  # (B, K, H, W)
        logits = student(x)  # (B, K, H, W)
        loss = losses.kl_distillation(logits, target, temperature, direction)
        _minimise(opt, loss)
        out = {"kl": loss.item()}
        if context == "data":
            out["bits_per_dim"] = F.cross_entropy(logits.detach().float(), x[:, 0]).item() / math.log(2)
        return out

    run = {"kind": "distill-pixelcnn", "seed": seed, "batch_size": batch_size, "lr": lr,
           "temperature": temperature, "direction": direction, "context": context,
           "pool": [pool_size, refresh_every] if context == "student" else None,
           "student": models.architecture(student), "teacher": models.architecture(teacher)}
    return run_loop(step_fn, steps=steps, seed=seed, modules=modules, optimizers={"opt": opt}, run=run,
                    state_path=state_path, checkpoint_every=checkpoint_every, progress=progress,
                    desc=f"distill ({direction} KL, T={temperature:g}, {context})")
