"""One evaluation protocol for every digit generator (notebooks 02, 04, 05 and 06), so every table
is comparable.

An :class:`Evaluator` holds the teacher's images for ``n`` fixed inputs (noise vectors for a GAN,
starting noise for a diffusion sampler) and ``n`` real training digits; calling it on a student's
images for the same inputs returns

- ``fid``: FID against the mnist5k training statistics (:mod:`.fid`; compare only at equal n);
- ``precision`` / ``recall``: improved precision and recall (fidelity / diversity) in the FID
  classifier's 128 features against the ``n`` real digits, k = 3 (:mod:`.diversity`);
- ``mse_to_teacher``: mean squared pixel error to the teacher's image for the same input;
- ``hf_ratio`` and ``band_ratios``: share of spectral energy above 0.25 cycles/pixel and in each
  :data:`.metrics.BANDS` band, student over teacher (sets of images, not pairs);
- ``gram_distance``: texture statistics in the FID classifier's first layer (``conv1``, 32
  channels at 14x14), relative distance to the teacher's (0 = same);
- ``class_tv_to_teacher``: total-variation distance between the digit-class histograms.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import data, taps
from ..utils import get_device
from . import diversity, metrics
from .fid import FID, embed


class Evaluator:
    """``Evaluator(teacher_images)(images)`` -> dict of the metrics above, for images ``[n, 1, 28, 28]``
    in [-1, 1] made from the same ``n`` inputs as ``teacher_images``. Everything runs on the
    device of ``teacher_images``."""

    def __init__(self, teacher_images: torch.Tensor):
        n = len(teacher_images)
        if n < 10:
            raise ValueError(f"n={n!r} is too small for FID and precision/recall; expected at least 10")
        self.teacher_images = teacher_images.detach()  # (n, 1, 28, 28)
        self.fid = FID.load(device=teacher_images.device)
        real = data.as_tensors(data.load("mnist5k", "train"))[0][:n]
        self.real_features = embed(self.fid.classifier, real)  # (n, 128) float64
        self.teacher_conv1 = self.conv1(self.teacher_images)
        self.teacher_hist = diversity.class_histogram(self.fid.classifier, self.teacher_images)

    @classmethod
    @torch.no_grad()
    def for_generator(cls, teacher: nn.Module, n: int = 500, seed: int = 0, device="auto") -> "Evaluator":
        """The protocol for generators ``z -> image``: ``n`` noise vectors ``evaluator.z`` ``[n, z_dim]``
        drawn from ``torch.Generator().manual_seed(10_000 + seed)`` and the teacher's images for them.
        Make each student's images from ``evaluator.z``."""
        teacher.to(get_device(device)).eval()
        z = teacher.sample_noise(n, torch.Generator().manual_seed(10_000 + seed))
        evaluator = cls(teacher(z))
        evaluator.z = z
        return evaluator

    @torch.no_grad()
    def conv1(self, images: torch.Tensor) -> torch.Tensor:
        """The FID classifier's first-layer features of ``images``, ``[N, 32, 14, 14]`` float64."""
        dev = self.teacher_images.device
        return taps.features(self.fid.classifier, ["conv1"], images.to(dev))[1]["conv1"].double().cpu()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict:
        if images.shape != self.teacher_images.shape:
            raise ValueError(f"expected the student's images for the evaluator's inputs, shape "
                             f"{list(self.teacher_images.shape)}, got {list(images.shape)}")
        precision, recall = diversity.precision_recall(self.real_features, embed(self.fid.classifier, images))
        coverage = diversity.mode_coverage(diversity.class_histogram(self.fid.classifier, images), self.teacher_hist)
        images = images.to(self.teacher_images.device)
        return {"fid": self.fid(images), "precision": precision, "recall": recall,
                "mse_to_teacher": (images - self.teacher_images).pow(2).mean().item(),
                "hf_ratio": metrics.high_frequency_ratio(images, self.teacher_images),
                "band_ratios": metrics.band_ratios(images, self.teacher_images).tolist(),
                "gram_distance": metrics.gram_distance(self.conv1(images), self.teacher_conv1),
                "class_tv_to_teacher": coverage["tv"]}
