"""The training loop that every method of kdlab shares (the shape of minGPT's ``Trainer``: one
config object, a step function, callbacks).

A method (:mod:`kdlab.methods`) writes its step as a plain function, draws each step's batch and
noise from the generator the trainer hands it, and lets :class:`Trainer` do the rest:

- **determinism**: step ``s`` gets a CPU generator seeded with ``(seed, s)``, so the same seed
  gives the same weights on a CPU, and a resumed run equals an uninterrupted one;
- **resume**: with ``config.state_path`` set, the full training state (weights, optimiser moments,
  step, history) is saved every ``checkpoint_every`` steps, at the end and on an interrupt; the
  same call again continues from it (a larger ``steps`` trains further, unless the method puts
  ``steps`` into its ``run`` description, as diffusion training does because its learning-rate
  schedule depends on it);
- **deferred interrupt**: Ctrl-C or Jupyter's stop button lets the current step finish, saves,
  then raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt`` that Jupyter shows as one line
  saying where the state is, not as a traceback); an interrupt never lands halfway through an
  update. A second Ctrl-C stops at once, inside the step: that half-done step is not saved, and
  the message names the last state saved before it;
- **non-finite stop**: a NaN or infinite metric raises :class:`TrainingDiverged` and removes the
  training state, so nothing from a diverged run can be loaded;
- **progress**: a ``tqdm`` bar (a widget in Jupyter, plain text with ``KDLAB_PROGRESS=text``);
- **several processes** (``torchrun``, with one process too; :mod:`kdlab.distributed`): a method that passes
  ``distributed=True`` calls its trained networks through :meth:`Trainer.net` (DistributedDataParallel)
  and keeps its rows of each global batch with :meth:`Trainer.shard`; metrics are averaged over the
  processes, and rank 0 alone saves the training state and shows the bar. Every process loads the
  same state, so a run resumes with any number of processes. Ctrl-C (torchrun passes it on to every
  process, a moment apart) is agreed on through the metrics' all-reduce, so every process stops after
  the same step;
- **speed on a CPU** (measured on 2026-11-30, 2 cores, batch 64): per-step metrics leave the device
  in one copy; ``channels_last=True`` stores the 4-D weights channels-last, which makes a width-32
  DCGAN teacher step 1.5x faster (46.9 -> 31.4 ms) but tiny students' steps up to 9% slower, so
  it is off by default. Tried and not kept: ``torch.compile`` of a step (1.2x faster for a GAN
  distillation step after 16 s of compiling, slower for the diffusion step after 37 s), Adam's
  ``foreach`` / ``fused`` (no difference), one thread each for two processes (1.05-1.4x).

    config = TrainConfig(steps=400, batch_size=64, lr=1e-3, seed=0, state_path="runs/x/state.safetensors")
    trainer = Trainer(config, modules={"student": student}, optimizers={"opt": opt}, run={"kind": "toy"})
    trainer.add_callback("on_step_end", lambda tr: print(tr.step, tr.metrics))
    history = trainer.fit(lambda step, g: my_step(student, torch.randn(64, 8, generator=g), opt))
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from . import checkpoints
from . import distributed as _distributed
from .utils import DeferredSignals, check_choice, check_int, get_device, jsonable, progress_bar

History = dict[str, list[float]]
StepFn = Callable[[int, torch.Generator], Mapping[str, "torch.Tensor | float"]]
EVENTS = ("on_step_start", "on_step_end", "on_train_end")
PRECISIONS = ("fp32", "bf16")
STOP = "__stop_requested"  # averaged with the metrics over the processes: > 0 when any process was interrupted


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or Jupyter's stop button. ``step`` of ``steps`` steps were done;
    ``saved_step`` is the step of the training state in ``state_path`` (``None``: nothing saved).
    A ``KeyboardInterrupt``, so whatever stops on Ctrl-C still does; IPython (Jupyter) prints what
    ``_render_traceback_`` returns instead of a traceback: the one-line message."""

    def __init__(self, message: str, step: int, steps: int, state_path: Path | None, saved_step: int | None):
        super().__init__(message)
        self.step, self.steps, self.state_path, self.saved_step = step, steps, state_path, saved_step

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What every training run needs, in one object (methods take it instead of forwarding arguments)."""

    steps: int = 1000  # optimisation steps (a resumed run trains up to this many)
    batch_size: int = 64  # examples or noise vectors per step
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0  # step s draws its batch and noise from a generator seeded with (seed, s)
    device: str | torch.device = "auto"  # "auto": CUDA, else Apple MPS, else CPU
    state_path: str | os.PathLike | None = None  # training state for resuming; None saves nothing
    checkpoint_every: int = 250  # steps between saves of the training state
    progress: bool = True  # show a progress bar
    channels_last: bool = False  # channels-last weights: DCGAN teacher steps 1.5x faster on 2 CPU cores (2026-11-30)
    precision: str = "fp32"  # "bf16": the trained networks' forward passes under bfloat16 autocast (weights stay fp32)

    def __post_init__(self):
        check_int("steps", self.steps, 0)
        check_int("batch_size", self.batch_size)
        check_int("seed", self.seed, 0)
        check_int("checkpoint_every", self.checkpoint_every)
        check_choice("precision", self.precision, PRECISIONS)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ValueError(f"lr={self.lr!r} is not valid; expected a finite number > 0")

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed: ``config.replace(steps=100, state_path=None)``."""
        return dataclasses.replace(self, **changes)


class EMA:
    """Exponential moving average of a model's weights: ``ema = d * ema + (1 - d) * weights`` after
    every step (``model`` holds the averaged copy). Buffers (BatchNorm's running statistics) are
    copied from the live model, not averaged: they describe the live model's activations, which is
    an approximation for the averaged weights (re-estimate them with forward passes in training mode
    where it matters).

    With ``warmup=True`` the decay at step ``t`` is ``d_t = min(decay, (1 + t) / (10 + t))``: early
    on, while the weights change fast, the average forgets quickly (after 100 steps it spans about 11
    steps, after 1,000 about 100), so it does not drag the first random weights along."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        if not 0 <= decay < 1:
            raise ValueError(f"ema_decay={decay!r} is not valid; expected 0 <= decay < 1")
        self.model, self.decay, self.warmup = copy.deepcopy(model).eval(), decay, warmup
        for p in self.model.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int | None) -> float:
        """The decay used after step ``step`` (0-based; ``None``: no warm-up)."""
        if not self.warmup or step is None:
            return self.decay
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Average ``model``'s weights in after training step ``step`` (needed for the warm-up)."""
        d = self.decay_at(step)
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p, 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator for one training step: batches and noise depend only on (seed, step)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def sample_batch(images: torch.Tensor, batch_size: int, g: torch.Generator, device=None) -> torch.Tensor:
    """``batch_size`` rows of ``images`` drawn uniformly with replacement by ``g``, on ``device`` (``None``:
    where ``images`` are; a global batch stays there until :meth:`Trainer.shard` copies each process's rows)."""
    idx = torch.randint(len(images), (batch_size,), generator=g)
    return images[idx] if device is None else images[idx].to(get_device(device))


def check_images(images: torch.Tensor, model: nn.Module, name: str = "images") -> None:
    """Raise ``ValueError`` (naming the argument ``name``) unless ``images`` is ``[N, C, S, S]`` as
    ``model.config`` expects."""
    cfg = model.config
    want = (cfg["channels"], cfg["img_size"], cfg["img_size"])
    if images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(f"{name} have shape {list(images.shape)} but {type(model).__name__} expects "
                         f"[N, {want[0]}, {want[1]}, {want[2]}] (its config: {cfg})")


def freeze(teacher: nn.Module, device) -> nn.Module:
    """Move a teacher to ``device``, put it in eval mode and stop gradients to its parameters."""
    teacher.to(get_device(device)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def module_state(tensors: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The state dict of module ``name`` inside the tensors of a training state (keys
    ``<name>.model.<parameter>``, as :class:`Trainer` saves them)."""
    prefix = f"{name}.model."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _to_floats(metrics: Mapping) -> dict[str, float]:
    """Step metrics (tensors or numbers) as Python floats, with one device-to-host copy in all."""
    names = list(metrics)
    if not names:
        return {}
    values = [torch.as_tensor(metrics[n]).detach().reshape(()) for n in names]
    device = next((v.device for v in values if v.device.type != "cpu"), torch.device("cpu"))
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    # stacked where the tensors are, then copied to the host once (.tolist)
    return dict(zip(names, torch.stack([v.to(device, dtype) for v in values]).tolist()))


class Autocast(nn.Module):
    """Mixed precision for one network: its forward pass runs under ``torch.autocast(dtype=torch.bfloat16)``,
    so matrix products and convolutions compute in bfloat16 while the weights, their gradients and the
    optimiser stay float32. The network's floating-point output is returned as float32, so the loss is
    computed in float32 outside autocast, and so is the backward pass, as PyTorch recommends. bfloat16
    keeps float32's exponent range, so no gradient scaler is needed."""

    def __init__(self, inner: nn.Module, device_type: str):
        super().__init__()
        self.inner, self.device_type = inner, device_type

    @property
    def module(self) -> nn.Module:
        """The network itself (inside DistributedDataParallel too), for its attributes."""
        return getattr(self.inner, "module", self.inner)

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.inner(*args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out


class Trainer:
    """Runs a step function ``config.steps`` times with everything in the module docstring.

    ``modules`` and ``optimizers`` (dicts of name -> object) are what the training state holds;
    ``run`` describes the run (method, hyperparameters, architectures) so that a state file of a
    different run is refused instead of resumed. The trainer moves ``modules`` to its device
    (``trainer.device``); the method moves its data there.

    Callbacks: ``add_callback(event, fn)`` with ``event`` in ``on_step_start``, ``on_step_end``,
    ``on_train_end``; ``fn(trainer)`` can read ``trainer.step``, ``trainer.metrics`` (the last
    step's floats) and ``trainer.history``.
    """

    def __init__(self, config: TrainConfig, *, modules: Mapping[str, nn.Module],
                 optimizers: Mapping[str, torch.optim.Optimizer], run: dict, desc: str = "train",
                 distributed: bool = False):
        self.config, self.desc = config, desc
        world = _distributed.world()
        if config.precision != "fp32" and not distributed:
            raise ValueError(f"{desc}: precision={config.precision!r} is not supported by this method (it does not call "
                             "its networks through Trainer.net); use precision='fp32'")
        if world.size > 1:
            if not distributed:
                raise ValueError(f"{desc}: this method runs in one process only, but WORLD_SIZE={world.size}; "
                                 "launch it without torchrun")
            _distributed.check_batch(config.batch_size, world)
        if distributed:  # under torchrun, even as its only process: join the group, train through DDP
            self.world, self.device = _distributed.setup(config.device)
        else:  # a method that does not use DDP trains as a plain process
            self.world, self.device = _distributed.World(), get_device(config.device)
        self.modules, self.optimizers = dict(modules), dict(optimizers)
        for m in self.modules.values():
            m.to(self.device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
        self.nets = {name: _distributed.wrap(m, self.world, self.device) for name, m in self.modules.items()}
        if config.precision == "bf16":
            self.nets = {name: Autocast(net, self.device.type) if _distributed.trainable(net) else net
                         for name, net in self.nets.items()}
        self.run = jsonable({**run, "seed": config.seed, "batch_size": config.batch_size, "lr": config.lr})
        self.state_path = Path(config.state_path) if config.state_path else None
        self.callbacks: dict[str, list[Callable[["Trainer"], None]]] = defaultdict(list)
        self.history: History = {}
        self.step, self.metrics = 0, {}
        self.saved_step: int | None = None  # step of the training state on disk (None: none yet)

    def net(self, name: str) -> nn.Module:
        """The module to call in a step: DistributedDataParallel of ``modules[name]`` in a process group (several
        processes, or one started by torchrun; its gradients are averaged over them), the module itself otherwise; with
        ``config.precision="bf16"`` its forward runs under bfloat16 autocast (:class:`Autocast`)."""
        return self.nets[name]

    def shard(self, x: torch.Tensor, to_device: bool = True) -> torch.Tensor:
        """This process's rows of a global batch ``x`` ``[config.batch_size, ...]`` (all of them for one process),
        on the training device (``to_device=False``: where ``x`` is, e.g. indices into a CPU dataset): the rows are
        taken first, so each process copies only its own ``B / W``."""
        rows = _distributed.shard(x, self.world)
        return rows.to(self.device) if to_device else rows

    def add_callback(self, event: str, fn: Callable[["Trainer"], None]) -> None:
        check_choice("event", event, EVENTS)
        self.callbacks[event].append(fn)

    def _trigger(self, event: str) -> None:
        for fn in self.callbacks[event]:
            fn(self)

    # ------------------------------------------------------------------ training state
    def _save(self, step: int) -> None:
        if self.state_path is None:
            return
        if not self.world.main:  # weights and optimiser states are the same in every process; rank 0 writes them
            # (and its own BatchNorm statistics: under Gloo each process keeps those of its own slices)
            _distributed.barrier(self.world)
            self.saved_step = step
            return
        tensors, groups = {}, {}
        for name, m in self.modules.items():
            tensors.update({f"{name}.model.{k}": v for k, v in m.state_dict().items()})
        for name, opt in self.optimizers.items():
            sd = opt.state_dict()
            for idx, st in sd["state"].items():
                tensors.update({f"{name}.optim.{idx}.{k}": torch.as_tensor(v) for k, v in st.items()})
            groups[name] = sd["param_groups"]
        checkpoints.save_tensors(self.state_path, tensors, {"kind": "training-state", "step": step,
                                                            "history": self.history, "run": self.run,
                                                            "param_groups": groups})
        self.saved_step = step
        _distributed.barrier(self.world)

    def _load(self) -> int:
        path = self.state_path
        tensors, meta = checkpoints.load_tensors(path)
        if meta.get("kind") != "training-state":
            raise checkpoints.CheckpointError(path, "is a model checkpoint, not a training state")
        if meta.get("run") != self.run:
            raise checkpoints.CheckpointError(
                path, f"belongs to a different run ({meta.get('run')} vs now {self.run}); "
                      "delete it or choose another output folder to start afresh")
        for name, m in self.modules.items():
            checkpoints.load_state(m, module_state(tensors, name), path)
        for name, opt in self.optimizers.items():
            state: dict = {}
            prefix = f"{name}.optim."
            for k, v in tensors.items():
                if k.startswith(prefix):
                    idx, key = k[len(prefix):].split(".", 1)
                    state.setdefault(int(idx), {})[key] = v  # load_state_dict moves it to the parameter's device
            opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
        self.history = {k: list(v) for k, v in meta["history"].items()}
        self.saved_step = int(meta["step"])
        return self.saved_step

    # ------------------------------------------------------------------ the loop
    def fit(self, step_fn: StepFn) -> History:
        """Call ``step_fn(step, generator) -> {metric: tensor or float}`` for the remaining steps
        and return the history ``{"step": [...], metric: [value per step]}``."""
        steps = self.config.steps
        start = 0
        if self.state_path is not None and self.state_path.exists():
            start = self._load()
        if self.world.group and not _distributed.same_over_processes(start, self.world, self.device):
            raise checkpoints.CheckpointError(self.state_path, "was found at different steps by different processes "
                                              "(not every process sees the same file); put the output folder on a file "
                                              "system that every machine sees")
        if start and start >= steps:
            if self.world.main:
                print(f"{self.desc}: {self.state_path} already holds {start} trained steps (asked for {steps}); "
                      "loaded it, nothing to train")
            return self._finish()
        for m in self.modules.values():
            m.train()
        bar = progress_bar(range(start, steps), initial=start, total=steps, desc=self.desc,
                           disable=not (self.config.progress and self.world.main))
        signals = (signal.SIGINT,) if not self.world.group else (signal.SIGINT, signal.SIGTERM)
        with DeferredSignals(signals) as interrupt:
            try:
                for step in bar:
                    self.step = step
                    self._trigger("on_step_start")
                    metrics = _to_floats(step_fn(step, step_generator(self.config.seed, step)))
                    stop = interrupt.requested
                    if self.world.group:  # one all-reduce: the metrics' means, and whether any process was stopped
                        metrics = _distributed.mean_over_processes(metrics | {STOP: float(stop)}, self.world, self.device)
                        stop = metrics.pop(STOP) > 0
                    self.metrics = metrics
                    self._check_finite(step)
                    self.history.setdefault("step", []).append(step)
                    for k, v in self.metrics.items():
                        self.history.setdefault(k, []).append(v)
                    if step % 10 == 0 or step == steps - 1:
                        bar.set_postfix({k: f"{v:.3f}" for k, v in self.metrics.items()}, refresh=False)
                    self._trigger("on_step_end")
                    if not self.world.group:  # a plain process: a stop pressed during the callbacks counts too (a group
                        stop = interrupt.requested  # stops on the agreed flag; a later signal goes into the next all-reduce)
                    if (step + 1) % self.config.checkpoint_every == 0 or stop:
                        self._save(step + 1)
                    if stop:
                        raise self._interrupted(step + 1, finished=True)
                self._save(steps)  # still deferred: Ctrl-C now cannot cut the last save short
                stop = interrupt.requested  # a stop pressed during the last step or that save is not lost
                if self.world.group:  # agreed once more: the last step's all-reduce may have come before it
                    stop = _distributed.mean_over_processes({STOP: float(stop)}, self.world, self.device)[STOP] > 0
                if stop:
                    raise self._interrupted(steps, finished=True)
            except TrainingInterrupted:
                raise
            except KeyboardInterrupt:  # a second Ctrl-C, inside a step: its half-done update is not saved
                saved_this_step = self.saved_step is not None and self.saved_step > self.step  # cut after the save
                raise self._interrupted(self.saved_step if saved_this_step else self.step, saved_this_step) from None
            finally:
                bar.close()
        return self._finish()

    def _interrupted(self, done: int, finished: bool) -> TrainingInterrupted:
        """The exception for an interrupt after ``done`` whole steps; its message says what is saved."""
        steps, path, saved = self.config.steps, self.state_path, self.saved_step
        where = (f"interrupted after step {done} of {steps}" if finished
                 else f"interrupted during step {done + 1} of {steps} (that step is lost)")
        if path is None:
            what = "nothing saved (no state_path); run the cell again to start afresh"
        elif saved is None:
            what = f"no training state saved yet ({path}); run the cell again to start afresh"
        elif saved == done:
            what = f"training state saved to {path}; run the cell again to resume"
        else:
            what = f"the training state of step {saved} is in {path}; run the cell again to resume from there"
        return TrainingInterrupted(f"{self.desc}: {where}; {what}", done, steps, path, saved)

    def _check_finite(self, step: int) -> None:
        bad = {k: v for k, v in self.metrics.items() if not math.isfinite(v)}
        if not bad:
            return
        if self.state_path is not None and self.state_path.exists() and self.world.main:
            self.state_path.unlink()
        raise TrainingDiverged(
            f"{self.desc}: non-finite loss at step {step}: {bad}. Training stopped and nothing was saved"
            f"{f' (training state {self.state_path} removed)' if self.state_path else ''}. Lower the learning "
            f"rate (lr={self.config.lr}) or check the data, then rerun.")

    def _finish(self) -> History:
        for m in self.modules.values():
            m.eval()
        self._trigger("on_train_end")
        return self.history
