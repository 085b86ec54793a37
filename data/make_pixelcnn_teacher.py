"""Train the PixelCNN teacher shipped as ``data/checkpoints/pixelcnn_teacher.safetensors`` (notebook 03
distils it).

Usage (from the repository root; the time is printed and recorded in the checkpoint)::

    python data/make_pixelcnn_teacher.py [--steps 5000] [--seed 0]

A :class:`kdlab.models.GatedPixelCNN` (K = 16 levels, 32 channels, 8 gated layers: no blind spot)
trained by maximum likelihood (:func:`kdlab.methods.pixelcnn.train_pixelcnn`, batch 32, Adam 1e-3)
on the 4,500 ``mnist5k`` training digits. The metadata records the settings, the training time, the
held-out bits/dim over the 500 test digits with a bootstrap 95% interval over those digits, and the
train bits/dim over the first 500 training digits.
"""
import argparse
import time
from pathlib import Path

import kdlab as kd

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "data" / "checkpoints" / "pixelcnn_teacher.safetensors"))
    parser.add_argument("--state", default=str(kd.paths.runs_root() / "pixelcnn_teacher_state.safetensors"),
                        help="training state, for resuming an interrupted run")
    args = parser.parse_args()
    kd.seed_everything(args.seed)
    train_x = kd.data.as_tensors(kd.data.load("mnist5k", "train"))[0]  # (4500, 1, 28, 28)
    test_x = kd.data.as_tensors(kd.data.load("mnist5k", "test"))[0]  # (500, 1, 28, 28)
    model = kd.models.GatedPixelCNN(levels=16, hidden=args.hidden, n_layers=args.layers)
    config = kd.TrainConfig(steps=args.steps, batch_size=32, lr=1e-3, seed=args.seed, device="cpu",
                            state_path=args.state)
    t0 = time.perf_counter()
    history = kd.methods.pixelcnn.train_pixelcnn(model, train_x, config)
    seconds = time.perf_counter() - t0
    heldout = kd.evaluation.intervals.mean_interval(kd.methods.pixelcnn.image_bits_per_dim(model, test_x))
    train_bpd = kd.methods.pixelcnn.bits_per_dim(model, train_x[:500])
    last = history["bits_per_dim"][-100:]
    meta = {"dataset": "mnist5k", "steps": args.steps, "seed": args.seed, "batch_size": 32, "lr": 1e-3,
            "train_seconds": round(seconds, 1), "final_loss": sum(last) / len(last),
            "metrics": {"test_bits_per_dim": heldout.estimate, "test_bits_per_dim_ci95": [heldout.lo, heldout.hi],
                        "train_bpd_first500": train_bpd}}
    kd.checkpoints.save(model, args.out, **meta)
    print(f"saved {args.out}: held-out bits/dim {heldout} (train {train_bpd:.4f}), {seconds:.0f} s")


if __name__ == "__main__":
    main()
