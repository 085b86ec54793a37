"""``kdlab fit``: one training method from the command line, the notebooks' code path, in one process or
under ``torchrun`` (:mod:`kdlab.distributed`).

    kdlab fit diffusion --out runs/t --steps 2000
    torchrun --nproc-per-node 4 -m kdlab fit distill-gan --data cifar10 --teacher runs/t/checkpoint.safetensors --out runs/s

Writes ``OUT/checkpoint.safetensors`` (the trained model; for ``diffusion`` its EMA weights) and
``OUT/metrics.json``; the training state goes to ``OUT/state.safetensors``, so the same command again
resumes (with any number of processes). ``--batch-size`` is the global batch, split over the processes.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from . import checkpoints, data, distributed, models
from .engine import TrainConfig, TrainingInterrupted
from .methods import diffusion, gan, pixelcnn
from .utils import write_metrics

METHODS = ("gan", "pixelcnn", "diffusion", "distill-gan", "distill-pixelcnn", "distill-diffusion")
TEACHER_CLASS = {"distill-gan": ("Generator",), "distill-pixelcnn": ("GatedPixelCNN", "PixelCNN"), "distill-diffusion": ("UNet",)}
SHIPPED_TEACHER = {"distill-gan": "gan_teacher", "distill-pixelcnn": "pixelcnn_teacher", "distill-diffusion": "diffusion_teacher"}
WIDTHS = {  # default widths: GAN width, PixelCNN hidden channels, U-Net first width (then x2, x4)
    "28x28": {"gan": 32, "pixelcnn": 32, "diffusion": 16},  # the shipped MNIST teachers' widths (unconditional here)
    "cifar10": {"gan": 64, "diffusion": 32},  # 3x32x32: DCGAN 512 -> 256 -> 128 -> 64 channels, U-Net 32/64/128
}
DEFAULTS = {  # method -> (steps, lr): the learning rates of data/make_*_teacher.py and notebooks 02, 03, 06
    "gan": (1500, 2e-4), "pixelcnn": (300, 1e-3), "diffusion": (2000, 1e-3),
    "distill-gan": (400, 1e-3), "distill-pixelcnn": (600, 1e-3), "distill-diffusion": (500, 3e-4)}


class FitError(ValueError):
    """A bad command-line argument; the message names it."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", help=f"one of {', '.join(METHODS)}")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoint, metrics.json, training state)")
    p.add_argument("--data", default="mnist5k", help=f"dataset, one of {', '.join(data.NAMES)} (default mnist5k)")
    p.add_argument("--download", action="store_true", help="download a torchvision dataset if it is not on disk")
    p.add_argument("--steps", type=int, help="optimisation steps (default: the method's, see kdlab.fit.DEFAULTS)")
    p.add_argument("--batch-size", type=int, default=64, help="the global batch, split over the processes (default 64)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the method's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda")
    p.add_argument("--teacher", type=Path, help="teacher checkpoint for distill-* (default: the shipped MNIST teacher)")
    p.add_argument("--width", type=int, help="model width (GAN width, PixelCNN hidden channels, U-Net first width); "
                                             "default: kdlab.fit.WIDTHS for the dataset, half the teacher's for a "
                                             "distilled student")
    p.add_argument("--student-steps", type=int, default=32,
                   help="distill-diffusion: sampling steps of the student, half the teacher's (default 32)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: the trained network's forward passes under bfloat16 autocast (weights stay fp32)")
    p.add_argument("--channels-last", action="store_true", help="channels-last weights (often faster convolutions)")
    p.add_argument("--checkpoint-every", type=int, default=250, help="steps between saves of the training state (250)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _teacher(args, images: torch.Tensor) -> torch.nn.Module:
    path = args.teacher or checkpoints.shipped(SHIPPED_TEACHER[args.method])
    if not Path(path).is_file():
        raise FitError(f"--teacher {path}: no such file")
    try:
        teacher = checkpoints.load(path)
    except Exception as e:  # a corrupt file or an unknown model class: one line, naming the argument
        raise FitError(f"--teacher {path}: {e}") from None
    cls, cfg = type(teacher).__name__, teacher.config
    if cls not in TEACHER_CLASS[args.method]:
        raise FitError(f"--teacher {path} is a {cls}; {args.method} needs a {' or '.join(TEACHER_CLASS[args.method])}")
    if (cfg.get("channels", 1), cfg["img_size"]) != (images.shape[1], images.shape[2]):
        raise FitError(f"--teacher {path} makes {cfg.get('channels', 1)}x{cfg['img_size']}x{cfg['img_size']} images; "
                       f"--data {args.data} has {images.shape[1]}x{images.shape[2]}x{images.shape[3]}")
    return teacher


def _models(args, images: torch.Tensor):
    """(model to train, teacher or None, extra modules) for ``args.method``."""
    channels, size = images.shape[1], images.shape[2]
    if "pixelcnn" in args.method and channels != 1:
        raise FitError(f"--data {args.data} has {channels} channels; kdlab's PixelCNNs model one (use gan or diffusion)")
    if args.method.startswith("distill-") and args.teacher is None and args.data != "mnist5k":
        raise FitError(f"{args.method} --data {args.data} needs --teacher: the shipped teachers are trained on mnist5k "
                       f"(train one with kdlab fit {args.method.removeprefix('distill-')} --data {args.data})")
    teacher = _teacher(args, images) if args.method.startswith("distill-") else None
    torch.manual_seed(args.seed)  # the initial weights (batches and noise come from the engine's per-step generators)
    w = args.width or WIDTHS["cifar10" if args.data == "cifar10" else "28x28"].get(args.method)
    if args.method == "gan":
        return models.Generator(width=w, img_size=size, channels=channels), None, \
            models.Discriminator(width=w, img_size=size, channels=channels)
    if args.method == "pixelcnn":
        return models.GatedPixelCNN(hidden=w, img_size=size, channels=channels), None, None
    if args.method == "diffusion":
        return models.UNet(channels=channels, widths=(w, 2 * w, 4 * w), img_size=size), None, None
    cfg, w = dict(teacher.config), args.width
    if args.method == "distill-gan":
        cfg["width"] = w or max(1, cfg["width"] // 2)
        return models.Generator(**cfg), teacher, None
    if args.method == "distill-pixelcnn":
        cfg["hidden"] = w or max(1, cfg["hidden"] // 2)
        return type(teacher)(**cfg), teacher, None
    if w is not None:
        raise FitError("--width does not apply to distill-diffusion: the student is a copy of the teacher")
    return copy.deepcopy(teacher), teacher, None


def _check(args) -> None:
    if args.method not in METHODS:
        raise FitError(f"method {args.method!r} is unknown; choose one of {', '.join(METHODS)}")
    if args.data not in data.NAMES:
        raise FitError(f"--data {args.data!r} is unknown; choose one of {', '.join(data.NAMES)}")
    if args.teacher is not None and not args.method.startswith("distill-"):
        raise FitError(f"--teacher applies to distill-* methods, not {args.method}")
    for name in ("steps", "batch_size", "width", "student_steps", "checkpoint_every"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise FitError(f"--{name.replace('_', '-')} {v} is not valid; expected an integer >= 1")
    if args.lr is not None and not 0 < args.lr < float("inf"):
        raise FitError(f"--lr {args.lr} is not valid; expected a finite number > 0")


def fit(args) -> dict:
    """Train as ``args`` (from :func:`add_arguments`) says; returns the metrics written to ``metrics.json``."""
    _check(args)
    w = distributed.world()
    if args.batch_size % w.size:  # before joining the group: every process stops at once
        raise FitError(f"--batch-size {args.batch_size} (the global batch) is not divisible by the {w.size} processes; "
                       f"choose a multiple of {w.size}")
    try:
        w, device = distributed.setup(args.device)
    except ValueError as e:
        raise FitError(f"--device {args.device}: {e}") from None
    error, images = None, None
    if args.download:  # rank 0 downloads first; the others then read its files
        if w.main:
            try:
                data.load(args.data, "train", download=True)
            except data.DatasetUnavailable as e:
                error = f"--data {args.data}: {e}"
        distributed.barrier(w)
    try:  # what can fail on some processes only (a file one machine lacks) is agreed on before training
        if error is None:
            images, labels = data.as_tensors(data.load(args.data, "train"))
            model, teacher, extra = _models(args, images)
    except data.DatasetUnavailable as e:
        error = f"--data {args.data}: {e}"
    except FitError as e:
        error = str(e)
    error = distributed.first_error(error, w, device)
    if error is not None:
        raise FitError(error)
    steps, lr = DEFAULTS[args.method]
    out = Path(args.out)
    if w.main:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier(w)
    config = TrainConfig(steps=args.steps or steps, batch_size=args.batch_size, lr=args.lr or lr, seed=args.seed,
                         device=device, state_path=out / "state.safetensors", progress=not args.quiet,
                         precision=args.precision, channels_last=args.channels_last,
                         checkpoint_every=args.checkpoint_every)
    start = time.perf_counter()
    if args.method == "gan":
        history = gan.train_gan(model, extra, images, config)
    elif args.method == "pixelcnn":
        history = pixelcnn.train_pixelcnn(model, images, config)
    elif args.method == "diffusion":
        model, history = diffusion.train_diffusion(model, images, config)
    elif args.method == "distill-gan":
        history = gan.distill(model, teacher, config)
    elif args.method == "distill-pixelcnn":
        history = pixelcnn.distill_pixelcnn(model, teacher, images, config)
    else:
        history = diffusion.distill_round(model, teacher, images, config, student_steps=args.student_steps)
    seconds = time.perf_counter() - start
    tail = {k: sum(v[-100:]) / len(v[-100:]) for k, v in history.items() if k != "step" and v}
    metrics = {"method": args.method, "data": args.data, "steps": config.steps, "batch_size": config.batch_size,
               "lr": config.lr, "seed": args.seed, "world_size": w.size, "backend": distributed.backend(), "device": str(device),
               "precision": args.precision, "channels_last": args.channels_last,
               "seconds_this_launch": seconds, "final_metrics_mean_of_last_100_steps": tail,
               "model": models.architecture(model),
               "teacher": str(args.teacher or SHIPPED_TEACHER.get(args.method, "")) or None}
    if w.main:
        checkpoints.save(model, out / "checkpoint.safetensors", kind=f"kdlab fit {args.method}", data=args.data,
                         steps=config.steps, seed=args.seed, world_size=w.size)
        write_metrics(out, metrics)
    distributed.barrier(w)
    return metrics


@distributed.record  # under torchrun, a rank's exception and traceback reach the launcher's summary
def main(args) -> int:
    """The ``kdlab fit`` subcommand: one-line errors (rank 0 prints them), exit status 2 on bad arguments."""
    w = distributed.world()
    try:
        metrics = fit(args)
    except FitError as e:
        if w.main:
            print(f"kdlab fit: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # Ctrl-C (torchrun passes it on to every process): the state is saved
        if w.main:
            saved = (f"the training state of step {e.saved_step} is in {e.state_path}; run the same command again to resume"
                     if e.saved_step else "nothing saved yet")
            print(f"kdlab fit: stopped after step {e.step} of {e.steps}; {saved}", file=sys.stderr)
        return 130
    finally:
        distributed.leave()  # the process is about to exit: leave the group cleanly
    if w.main:
        group = f" ({metrics['backend']})" if metrics["backend"] else ""
        print(f"kdlab fit {args.method}: {metrics['steps']} steps on {metrics['world_size']} process(es){group} in "
              f"{metrics['seconds_this_launch']:.0f} s -> {Path(args.out) / 'checkpoint.safetensors'}")
        print(json.dumps(metrics["final_metrics_mean_of_last_100_steps"]))
    return 0
