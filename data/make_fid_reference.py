"""Train the classifier behind kdlab's FID and fit the reference statistics, shipped as
``data/checkpoints/mnist_classifier.safetensors`` and ``data/checkpoints/mnist5k_fid_stats.safetensors``.

Usage (from the repository root, about a minute on two CPU cores)::

    python data/make_fid_reference.py [--steps 2000] [--seed 0] [--out data/checkpoints]

A :class:`kdlab.models.Classifier` learns the ten digits of the 4,500 ``mnist5k`` training images
by cross-entropy (Adam 1e-3, batch 64, each batch shifted by up to 2 pixels), on kdlab's training
engine; then the mean and covariance of its 128 ``features`` activations over the same images
become the reference Gaussian of :class:`kdlab.evaluation.FID`. The metadata records the held-out
accuracy and the FID floor (the 500 held-out digits against the reference).
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import kdlab as kd
from kdlab.evaluation.fid import CLASSIFIER, STATS, accuracy, embed
from kdlab.evaluation.metrics import frechet_distance, gaussian_stats


def classifier_step(model, x, y, opt):
    """One cross-entropy step on images ``x`` ``[B, 1, 28, 28]`` and labels ``y`` ``[B]``."""
    logits = model(x)  # (B, 10)
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.detach(), "accuracy": (logits.detach().argmax(1) == y).float().mean()}


def train_classifier(model, images, labels, config: kd.TrainConfig) -> dict:
    """:func:`classifier_step` on ``images`` ``[N, 1, 28, 28]`` and ``labels`` ``[N]``, each batch shifted
    by up to 2 pixels at random (augmentation). Returns the history (``loss`` in nats, ``accuracy``)."""
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    trainer = kd.engine.Trainer(config, modules={"model": model}, optimizers={"opt": opt}, desc="classifier",
                                run={"kind": "classifier", "model": kd.models.architecture(model)})

    def step(s, g):
        idx = torch.randint(len(images), (config.batch_size,), generator=g)
        dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
        x = torch.roll(images[idx], shifts=(dy, dx), dims=(2, 3)).to(trainer.device)  # shifted digits
        return classifier_step(model, x, labels[idx].to(trainer.device), opt)

    return trainer.fit(step)


def build_reference(out_dir: Path, steps: int = 2000, seed: int = 0, progress: bool = True) -> dict:
    """Train the classifier, save it and the reference statistics to ``out_dir``; return the numbers."""
    train_x, train_y = kd.data.as_tensors(kd.data.load("mnist5k", "train"))
    test_x, test_y = kd.data.as_tensors(kd.data.load("mnist5k", "test"))
    kd.seed_everything(seed)
    clf = kd.models.Classifier()
    config = kd.TrainConfig(steps=steps, batch_size=64, lr=1e-3, seed=seed, device="cpu", progress=progress)
    train_classifier(clf, train_x, train_y, config)
    mu, sigma = gaussian_stats(embed(clf, train_x))
    numbers = {"heldout_accuracy": accuracy(clf, test_x, test_y), "train_accuracy": accuracy(clf, train_x, train_y),
               "fid_heldout500_vs_train": frechet_distance(*gaussian_stats(embed(clf, test_x)), mu, sigma)}
    kd.checkpoints.save(clf, out_dir / f"{CLASSIFIER}.safetensors", dataset="mnist5k", steps=steps, seed=seed,
                        batch_size=64, lr=1e-3, metrics=numbers, recipe="python data/make_fid_reference.py")
    kd.checkpoints.save_tensors(out_dir / f"{STATS}.safetensors", {"mu": mu, "sigma": sigma},
                                {"kind": "fid-reference", "dataset": "mnist5k", "split": "train", "n": len(train_x),
                                 "features": "Classifier.features (128, after ReLU)", "metrics": numbers})
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "checkpoints"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_reference(Path(args.out), steps=args.steps, seed=args.seed))


if __name__ == "__main__":
    main()
