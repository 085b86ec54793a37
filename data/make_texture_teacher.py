"""Train the GAN teacher for the procedural ``textures`` data, shipped as
``data/checkpoints/texture_teacher.safetensors`` (notebook 05 distils it band by band).

Usage (from the repository root, about 8 minutes on two CPU cores)::

    python data/make_texture_teacher.py [--steps 4000] [--seed 0]

A DCGAN generator (width 32, the same architecture as the digit teacher) and discriminator
(width 16) trained with the non-saturating GAN loss on the 3,600 training textures of
``kdlab.data.load("textures", "train")``. The checkpoint metadata records the settings, the
training time and the per-band energy shares (``kdlab.textures.BANDS``) of 1,000 teacher samples
next to those of the training textures, which is the property notebook 05 relies on.
"""
import argparse
import time
from pathlib import Path

import torch

import kdlab as kd


def band_shares(images: torch.Tensor) -> list[float]:
    """Share of spectral energy in each ``kdlab.textures.BANDS`` band, ``[3]``."""
    return kd.evaluation.metrics.band_shares(images, tuple(kd.textures.BANDS.values())).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "checkpoints" / "texture_teacher.safetensors"))
    parser.add_argument("--state", default=str(kd.paths.runs_root() / "texture_teacher_state.safetensors"),
                        help="training state, for resuming an interrupted run")
    args = parser.parse_args()
    kd.seed_everything(args.seed)
    real = kd.data.as_tensors(kd.data.load("textures", "train"))[0]  # (N, 1, 28, 28)
    gen, disc = kd.models.Generator(width=32), kd.models.Discriminator(width=16)
    t0 = time.perf_counter()
    config = kd.TrainConfig(steps=args.steps, batch_size=64, lr=2e-4, seed=args.seed, device="cpu",
                            state_path=args.state)
    history = kd.methods.gan.train_gan(gen, disc, real, config)
    seconds = time.perf_counter() - t0
    gen.eval()
    with torch.no_grad():
        samples = gen(gen.sample_noise(1000, torch.Generator().manual_seed(1)))
    last = {k: sum(v[-50:]) / len(v[-50:]) for k, v in history.items() if k in ("loss_d", "loss_g")}
    meta = {"dataset": "textures", "steps": args.steps, "seed": args.seed, "batch_size": 64, "lr": 2e-4,
            "discriminator": kd.models.architecture(disc), "train_seconds": round(seconds, 1),
            "final_losses": last, "band_names": list(kd.textures.BANDS),
            "band_shares_teacher": band_shares(samples), "band_shares_data": band_shares(real[:1000])}
    kd.checkpoints.save(gen, args.out, **meta)
    print(f"saved {args.out}: {meta}")


if __name__ == "__main__":
    main()
