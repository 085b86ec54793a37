"""FID of notebook 06's progressively distilled students on a noise set the notebook does not use.

    python tools/fid_of_round_students.py RUN_FOLDER [RUN_FOLDER ...] [--noise-seed 20000]

Each RUN_FOLDER is an `out_dir` of `notebooks/06_diffusion_step_distillation.ipynb` (it holds
`state_round_N.safetensors` for N = 32, 16, ..., 1). The script rebuilds every round's student
from its training state, samples 500 images with N DDIM steps from the validation noise, and
prints one JSON line: the FID of each student, of the shipped teacher at 64 steps and of the
teacher's plain DDIM at each N. A setting (a learning rate, a step budget) chosen on the
notebook's own noise is checked here on other noise.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import kdlab as kd
from kdlab.methods import diffusion as dm

STEPS = (32, 16, 8, 4, 2, 1)


def student_of(state: Path, architecture: dict) -> torch.nn.Module:
    """The student saved in a round's training state (its ``student.model.*`` tensors)."""
    tensors, _ = kd.checkpoints.load_tensors(state)
    student = kd.models.build(architecture)
    kd.checkpoints.load_state(student, kd.engine.module_state(tensors, "student"), state)
    return student.eval().to(memory_format=torch.channels_last)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="out_dir folders of notebook 06 runs")
    parser.add_argument("--noise-seed", type=int, default=20_000, help="seed of the 500 validation noise images")
    args = parser.parse_args(argv)
    fid = kd.evaluation.FID.load(device="cpu")
    noise = torch.randn(500, 1, 28, 28, generator=torch.Generator().manual_seed(args.noise_seed))
    teacher = kd.checkpoints.load(kd.checkpoints.shipped("diffusion_teacher")).to(memory_format=torch.channels_last)
    out = {"noise_seed": args.noise_seed, "teacher DDIM: 64 steps": fid(dm.sample(teacher, noise, 64))}
    for n in STEPS:
        out[f"teacher DDIM: {n} steps"] = fid(dm.sample(teacher, noise, n))
    labels = [str(run) for run in args.runs]  # the folders as given: two runs' folders share a name
    if len(set(labels)) != len(labels):
        raise SystemExit("the same run folder is named twice")
    for run, label in zip(args.runs, labels):
        for n in STEPS:
            student = student_of(run / f"state_round_{n}.safetensors", kd.models.architecture(teacher))
            out[f"{label}: {n} steps"] = fid(dm.sample(student, noise, n))
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
