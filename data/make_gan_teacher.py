"""Train the GAN teacher shipped as ``data/checkpoints/gan_teacher.safetensors`` (with its
discriminator, ``gan_discriminator.safetensors``), for notebooks 02, 04 and 05.

Usage (from the repository root; the time is printed and recorded in the checkpoint)::

    python data/make_gan_teacher.py [--steps 10000] [--eval-every 2000] [--seed 0]

The DCGAN of notebook 01 made class-conditional (``Generator(z_dim=64, width=32, n_classes=10)``: the
digit's one-hot class rides at the end of the noise; ``Discriminator(width=32, n_classes=10)``, a
projection discriminator), batch 64, Adam 2e-4 with betas (0.5, 0.999), channels-last, trained on
the 4,500 ``mnist5k`` training digits with their labels, with an exponential moving average (decay
0.999, warm-up ``min(decay, (1 + t) / (10 + t))``) of the generator's weights
(:func:`kdlab.methods.gan.train_gan` with ``ema`` and ``labels``). ``--unconditional``,
``--disc-width``, ``--augment`` (:func:`kdlab.methods.gan.diff_augment`) and ``--no-ema-warmup``
give the variants that ``data/README.md`` compares.

Every ``--eval-every`` steps the FID (kdlab's protocol, 500 samples) of the raw and of the averaged
generator is measured on *validation* noise (``torch.Generator().manual_seed(7)``), never on the
evaluation noise the notebooks report on (seed 10,000 + seed); the generator (raw or averaged
weights) of the step with the lowest validation FID is saved, and its FID on the evaluation noise,
with a bootstrap 95% interval, goes into the metadata.
"""
import argparse
import copy
import json
import time
from pathlib import Path

import torch

import kdlab as kd

ROOT = Path(__file__).resolve().parent.parent
VALIDATION_SEED = 7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--disc-width", type=int, default=32)
    parser.add_argument("--augment", action="store_true", help="differentiable augmentation for the discriminator")
    parser.add_argument("--unconditional", action="store_true",
                        help="no digit class (default: the class one-hot in the noise, projection discriminator)")
    parser.add_argument("--no-ema-warmup", action="store_true", help="plain EMA from the first step")
    parser.add_argument("--out", default=str(ROOT / "data" / "checkpoints"))
    parser.add_argument("--state", default=str(kd.paths.runs_root() / "gan_teacher_state.safetensors"),
                        help="training state, for resuming an interrupted run")
    args = parser.parse_args()
    kd.seed_everything(args.seed)
    real, digits = kd.data.as_tensors(kd.data.load("mnist5k", "train"))  # (4500, 1, 28, 28), (4500,)
    classes = 0 if args.unconditional else 10
    G = kd.models.Generator(z_dim=64, width=32, n_classes=classes)
    D = kd.models.Discriminator(width=args.disc_width, n_classes=classes)
    ema = kd.engine.EMA(G, args.ema_decay, warmup=not args.no_ema_warmup)
    fid = kd.evaluation.FID.load(device="cpu")
    z_val = G.sample_noise(500, torch.Generator().manual_seed(VALIDATION_SEED))
    log, best = [], None
    t0, trained = time.perf_counter(), 0
    for stop in range(args.eval_every, args.steps + 1, args.eval_every):
        config = kd.TrainConfig(steps=stop, batch_size=64, lr=2e-4, seed=args.seed, device="cpu",
                                state_path=args.state, channels_last=True)
        history = kd.methods.gan.train_gan(G, D, real, config, ema=ema, augment=args.augment,
                                           labels=None if args.unconditional else digits)
        with torch.no_grad():
            row = {"step": stop, "fid_val_raw": fid(G.eval()(z_val)), "fid_val_ema": fid(ema.model.eval()(z_val)),
                   "seconds": round(time.perf_counter() - t0, 1)}
        log.append(row)
        print(json.dumps(row), flush=True)
        for kind, model in (("raw", G), ("averaged", ema.model)):  # both weights are candidates
            if best is None or row[f"fid_val_{'ema' if kind == 'averaged' else 'raw'}"] < best[0]["fid_val"]:
                best = ({**row, "weights": kind, "fid_val": row[f"fid_val_{'ema' if kind == 'averaged' else 'raw'}"]},
                        copy.deepcopy(model).eval(), copy.deepcopy(D), history)
        trained = stop
    row, teacher, disc, history = best
    evaluator = kd.evaluation.Evaluator.for_generator(teacher, n=500, seed=0, device="cpu")
    features = kd.evaluation.fid.embed(evaluator.fid.classifier, evaluator.teacher_images)
    interval = kd.evaluation.intervals.fid_interval(features, evaluator.fid.mu, evaluator.fid.sigma)
    loss_d, loss_g = history["loss_d"][-100:], history["loss_g"][-100:]
    meta = {"dataset": "mnist5k", "steps": row["step"], "weights": row["weights"], "steps_trained": trained, "seed": args.seed,
            "batch_size": 64, "lr": 2e-4, "betas": [0.5, 0.999], "ema_decay": args.ema_decay,
            "ema_warmup": not args.no_ema_warmup,
            "augment": args.augment, "conditional": not args.unconditional, "channels_last": True,
            "selection": f"lowest FID of the raw or averaged generator on validation noise (seed {VALIDATION_SEED}), "
                         f"measured every {args.eval_every} steps",
            "validation_log": log, "train_seconds": log[-1]["seconds"],
            "metrics": {"fid_500": interval.estimate, "fid_500_ci95": [interval.lo, interval.hi], "fid_500_noise_seed": 10_000,
                        "loss_d_last100": sum(loss_d) / len(loss_d), "loss_g_last100": sum(loss_g) / len(loss_g)}}
    out = Path(args.out)
    kd.checkpoints.save(teacher.to(memory_format=torch.contiguous_format), out / "gan_teacher.safetensors", **meta)
    kd.checkpoints.save(disc.to(memory_format=torch.contiguous_format), out / "gan_discriminator.safetensors",
                        **{k: v for k, v in meta.items() if k != "metrics"})
    print(f"saved {out / 'gan_teacher.safetensors'}: FID {interval} at step {row['step']} ({row['weights']} weights)")


if __name__ == "__main__":
    main()
