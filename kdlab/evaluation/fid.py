"""FID on MNIST-like digits, in the feature space of kdlab's own small classifier.

Protocol (the usual "FID on MNIST": Inception features mean nothing on 28x28 digits):

- feature extractor: :class:`kdlab.models.Classifier` trained on the ``mnist5k`` train split
  (shipped as ``data/checkpoints/mnist_classifier.safetensors``, held-out accuracy in its metadata);
- features: the 128 activations of its ``features`` block (after ReLU), for images in [-1, 1];
- reference statistics: mean and covariance of those features over the 4,500 ``mnist5k`` training
  digits (shipped as ``data/checkpoints/mnist5k_fid_stats.safetensors``);
- FID = Fréchet distance between the Gaussian fitted to the generated images' features and the
  reference Gaussian. FID is biased upwards for small sample counts, so compare numbers only at
  the same count; the floor is the FID of the 500 real held-out digits (also in the metadata).

Rebuild both files with ``python -m kdlab.fid`` (about a minute on a CPU).
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from . import checkpoints, data, models, train
from .metrics import frechet_distance, gaussian_stats
from .utils import data_root, seed_everything

CLASSIFIER = "mnist_classifier"
STATS = "mnist5k_fid_stats"


@torch.no_grad()
def embed(classifier: models.Classifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Classifier features ``[N, feature_dim]`` (float64) of images ``[N, 1, 28, 28]`` in [-1, 1]."""
    classifier.eval()
    dev = next(classifier.parameters()).device
    return torch.cat([classifier.embed(images[i:i + batch_size].to(dev, torch.float32)).double().cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def accuracy(classifier: models.Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    classifier.eval()
    dev = next(classifier.parameters()).device
    return (classifier(images.to(dev)).argmax(1).cpu() == labels).float().mean().item()


class FID:
    """``FID.load()`` reads the shipped classifier and reference statistics; ``fid(images)`` scores
    images ``[N, 1, 28, 28]`` in [-1, 1] (N >= 2) against the mnist5k training digits."""

    def __init__(self, classifier: models.Classifier, mu: torch.Tensor, sigma: torch.Tensor):
        self.classifier, self.mu, self.sigma = classifier, mu, sigma

    @classmethod
    def load(cls, device="cpu") -> "FID":
        classifier = checkpoints.load(checkpoints.shipped(CLASSIFIER), device=device)
        tensors, _ = checkpoints.load_tensors(checkpoints.shipped(STATS))
        return cls(classifier, tensors["mu"], tensors["sigma"])

    def __call__(self, images: torch.Tensor) -> float:
        if images.dim() != 4 or images.shape[0] < 2 or tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(f"FID needs images [N >= 2, 1, 28, 28] in [-1, 1], got shape {list(images.shape)}")
        if images.min() >= 0:
            warnings.warn("FID: no pixel is below 0; kdlab images live in [-1, 1], not [0, 1]", stacklevel=2)
        return frechet_distance(*gaussian_stats(embed(self.classifier, images)), self.mu, self.sigma)


def build_reference(out_dir=None, steps: int = 2000, seed: int = 0, progress: bool = True) -> dict:
    """Train the FID classifier on mnist5k, save it and the reference statistics to ``out_dir``
    (default ``data/checkpoints``), and return the measured numbers."""
    out = Path(out_dir) if out_dir else data_root() / "checkpoints"
    train_x, train_y = data.as_tensors(data.load("mnist5k", "train"))
    test_x, test_y = data.as_tensors(data.load("mnist5k", "test"))
    seed_everything(seed)
    clf = models.Classifier()
    train.train_classifier(clf, train_x, train_y, steps=steps, seed=seed, device="cpu", progress=progress)
    mu, sigma = gaussian_stats(embed(clf, train_x))
    numbers = {"heldout_accuracy": accuracy(clf, test_x, test_y), "train_accuracy": accuracy(clf, train_x, train_y),
               "fid_heldout500_vs_train": frechet_distance(*gaussian_stats(embed(clf, test_x)), mu, sigma)}
    checkpoints.save(clf, out / f"{CLASSIFIER}.safetensors", dataset="mnist5k", steps=steps, seed=seed,
                     batch_size=64, lr=1e-3, metrics=numbers, recipe="python -m kdlab.fid")
    checkpoints.save_tensors(out / f"{STATS}.safetensors", {"mu": mu, "sigma": sigma},
                             {"kind": "fid-reference", "dataset": "mnist5k", "split": "train", "n": len(train_x),
                              "features": "Classifier.features (128, after ReLU)", "metrics": numbers})
    return numbers


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Rebuild the FID classifier and reference statistics.")
    ap.add_argument("--out", default=None, help="folder (default: data/checkpoints)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(build_reference(out_dir=args.out, steps=args.steps, seed=args.seed))
