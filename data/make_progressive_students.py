"""Train the progressive-distillation students shipped as
``data/checkpoints/progressive_{4,2,1}step.safetensors``: notebook 06's default rounds, kept so that
notebook 08 can compare its one-step methods with them without rerunning notebook 06.

Usage (from the repository root; the time is printed and recorded in each checkpoint)::

    OMP_NUM_THREADS=1 python data/make_progressive_students.py [--round-steps 500] [--seed 0]   # as shipped

Exactly notebook 06's default run: the shipped diffusion teacher (channels-last) at 64 DDIM steps,
halved six times (64 -> 32 -> ... -> 1) by :func:`kdlab.methods.diffusion.distill_round`, each round
``round_steps`` steps with batches of 32, Adam 3e-4, seed ``seed + n`` for the round that ends at
``n`` steps, on the 4,500 ``mnist5k`` training digits. The 4-, 2- and 1-step students are saved; the
metadata records the settings, the round's training time and its student step count.
"""
import argparse
import copy
import time
from pathlib import Path

import torch

import kdlab as kd
from kdlab.methods import diffusion as dm

ROOT = Path(__file__).resolve().parent.parent
KEEP = (4, 2, 1)  # the student step counts that are shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--round-steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "data" / "checkpoints"))
    args = parser.parse_args()
    teacher = kd.checkpoints.load(kd.checkpoints.shipped("diffusion_teacher")).eval()
    current = teacher.to(memory_format=torch.channels_last)  # as notebook 06 (faster convolutions on a CPU)
    real = kd.data.as_tensors(kd.data.load("mnist5k", "train"))[0]  # (4500, 1, 28, 28)
    config = kd.TrainConfig(steps=args.round_steps, batch_size=32, lr=3e-4, device="cpu")
    total = 0.0
    for n in (32, 16, 8, 4, 2, 1):
        student = copy.deepcopy(current)
        t0 = time.perf_counter()
        history = dm.distill_round(student, current, real, config.replace(seed=args.seed + n), student_steps=n)
        seconds = time.perf_counter() - t0
        total += seconds
        if n in KEEP:
            loss = history["loss"][-100:]
            path = Path(args.out) / f"progressive_{n}step.safetensors"
            kd.checkpoints.save(student.eval(), path, teacher="diffusion_teacher", student_steps=n, base_steps=64,
                                round_steps=args.round_steps, batch_size=32, lr=3e-4, seed=args.seed,
                                round_seconds=round(seconds, 1), seconds_since_64_steps=round(total, 1),
                                final_loss=sum(loss) / len(loss))
            print(f"saved {path} ({seconds:.0f} s for this round, {total:.0f} s since 64 steps)")
        current = student.eval()


if __name__ == "__main__":
    main()
