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

Rebuild both files with ``python data/make_fid_reference.py`` (about a minute on a CPU).
"""
from __future__ import annotations

import warnings

import torch

from .. import checkpoints, models
from .metrics import frechet_distance, gaussian_stats

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
    """Share of ``images`` whose predicted class equals ``labels`` ``[N]``."""
    classifier.eval()
    dev = next(classifier.parameters()).device
    return (classifier(images.to(dev)).argmax(1).cpu() == labels).float().mean().item()


def looks_like_unit_range(images: torch.Tensor) -> bool:
    """Whether ``images`` ``[N, C, H, W]`` look like digits scaled to [0, 1] instead of kdlab's [-1, 1]:
    no pixel below 0, a background at 0 (the median pixel is below 0.1: digits are mostly
    background) and bright strokes (a pixel above 0.5). "No pixel below 0" alone is no evidence: a
    barely trained generator's images in [-1, 1] can all be a faint gray just above 0."""
    x = images.detach().float()
    return bool(x.min() >= 0 and x.max() > 0.5 and x.median() < 0.1)


class FID:
    """``FID.load()`` reads the shipped classifier and reference statistics; ``fid(images)`` scores
    images ``[N, 1, 28, 28]`` in [-1, 1] (N >= 2) against the mnist5k training digits."""

    def __init__(self, classifier: models.Classifier, mu: torch.Tensor, sigma: torch.Tensor):
        self.classifier, self.mu, self.sigma = classifier, mu, sigma

    @classmethod
    def load(cls, device="auto") -> "FID":
        """The shipped classifier (on ``device``) and reference statistics."""
        classifier = checkpoints.load(checkpoints.shipped(CLASSIFIER), device=device)
        tensors, _ = checkpoints.load_tensors(checkpoints.shipped(STATS))
        return cls(classifier, tensors["mu"], tensors["sigma"])

    def __call__(self, images: torch.Tensor) -> float:
        if images.dim() != 4 or images.shape[0] < 2 or tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(f"FID needs images [N >= 2, 1, 28, 28] in [-1, 1], got shape {list(images.shape)}")
        if looks_like_unit_range(images):
            warnings.warn("FID: these images look like digits in [0, 1] (no pixel below 0, background at 0); kdlab "
                          "images live in [-1, 1]: pass 2 * x - 1", stacklevel=2)
        return frechet_distance(*gaussian_stats(embed(self.classifier, images)), self.mu, self.sigma)
