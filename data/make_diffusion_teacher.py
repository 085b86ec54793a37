"""Train the diffusion teacher shipped as ``data/checkpoints/diffusion_teacher.safetensors``
(notebook 06 distils its sampling steps).

Usage (from the repository root; the time is printed and recorded in the checkpoint)::

    python data/make_diffusion_teacher.py [--steps 10000] [--seed 0]

A :class:`kdlab.models.UNet` (widths 16/32/64) trained with the v-parameterisation on the 4,500
``mnist5k`` training digits (:func:`kdlab.methods.diffusion.train_diffusion`: cosine schedule, Adam 1e-3 with
warm-up and cosine decay, batch 64, EMA 0.999); the EMA weights are saved. The metadata records
the settings, the training time and the FID (kdlab's protocol, 500 samples) of 64-step DDIM samples.
"""
import argparse
import time
from pathlib import Path

import torch

import kdlab as kd

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--widths", default="16,32,64")
    parser.add_argument("--out", default=str(ROOT / "data" / "checkpoints" / "diffusion_teacher.safetensors"))
    parser.add_argument("--state", default=str(kd.paths.runs_root() / "diffusion_teacher_state.safetensors"),
                        help="training state, for resuming an interrupted run")
    args = parser.parse_args()
    kd.seed_everything(args.seed)
    real = kd.data.as_tensors(kd.data.load("mnist5k", "train"))[0]  # (4500, 1, 28, 28)
    model = kd.models.UNet(widths=[int(w) for w in args.widths.split(",")])
    t0 = time.perf_counter()
    config = kd.TrainConfig(steps=args.steps, batch_size=64, lr=1e-3, seed=args.seed, device="cpu",
                            state_path=args.state)
    ema, history = kd.methods.diffusion.train_diffusion(model, real, config)
    seconds = time.perf_counter() - t0
    noise = torch.randn(500, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    fid = kd.evaluation.FID.load(device="cpu")(kd.methods.diffusion.sample(ema, noise, 64))
    loss = history["loss"][-200:]
    meta = {"dataset": "mnist5k", "steps": args.steps, "seed": args.seed, "batch_size": 64, "lr": 1e-3,
            "ema_decay": 0.999, "parameterisation": "v", "schedule": "cosine", "train_seconds": round(seconds, 1),
            "final_loss": sum(loss) / len(loss), "metrics": {"fid_500_ddim64": fid}}
    kd.checkpoints.save(ema, args.out, **meta)
    print(f"saved {args.out}: {meta}")


if __name__ == "__main__":
    main()
