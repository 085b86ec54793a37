"""One evaluation protocol for digit students (notebooks 04 and 05), so every table is comparable.

:class:`StudentEvaluator` fixes ``n`` noise vectors, the teacher's images for them and the real
digits once; calling it on a student's images for the same noise returns

- ``fid``: FID against the mnist5k training statistics (:mod:`kdlab.fid`; compare only at equal n);
- ``precision`` / ``recall``: improved precision and recall (fidelity / diversity) in the FID
  classifier's 128 features against ``n`` training digits, k = 3 (:mod:`kdlab.diversity`);
- ``mse_to_teacher``: mean squared pixel error to the teacher's image for the same noise;
- ``hf_ratio`` and ``band_ratios``: share of spectral energy above 0.25 cycles/pixel and in each
  :data:`kdlab.metrics.BANDS` band, student over teacher (sets of images, not pairs);
- ``gram_distance``: texture statistics of the images in the FID classifier's first layer
  (``conv1``, 32 channels at 14x14), relative distance to the teacher's (0 = same);
- ``class_tv_to_teacher``: total-variation distance between the digit-class histograms.
"""
from __future__ import annotations

import torch
from torch import nn

from . import data, diversity, fid as fid_module, metrics, taps


class StudentEvaluator:
    """``StudentEvaluator(teacher, n=500, seed=0)(images)`` -> dict of the metrics above.

    ``z`` (``[n, z_dim]``, drawn from ``torch.Generator().manual_seed(10_000 + seed)``) and
    ``teacher_images`` (``[n, 1, 28, 28]``) are attributes: make the student's images from ``z``.
    """

    def __init__(self, teacher: nn.Module, n: int = 500, seed: int = 0, device=None):
        if n < 10:
            raise ValueError(f"n={n!r} is too small for FID and precision/recall; expected at least 10")
        self.device = device or next(teacher.parameters()).device
        self.fid = fid_module.FID.load(device=self.device)
        self.z = teacher.sample_noise(n, torch.Generator().manual_seed(10_000 + seed), device=self.device)
        with torch.no_grad():
            self.teacher_images = teacher.eval()(self.z)  # (n, 1, 28, 28)
        real = data.as_tensors(data.load("mnist5k", "train"))[0][:n]
        self.real_features = fid_module.embed(self.fid.classifier, real)  # (n, 128) float64
        self.teacher_conv1 = self.conv1(self.teacher_images)
        self.teacher_hist = diversity.class_histogram(self.fid.classifier, self.teacher_images)

    @torch.no_grad()
    def conv1(self, images: torch.Tensor) -> torch.Tensor:
        """The FID classifier's first-layer features of ``images``, ``[N, 32, 14, 14]`` float64."""
        return taps.features(self.fid.classifier, ["conv1"], images.to(self.device))[1]["conv1"].double().cpu()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict:
        if images.shape != self.teacher_images.shape:
            raise ValueError(f"expected the student's images for evaluator.z, shape {list(self.teacher_images.shape)}, "
                             f"got {list(images.shape)}")
        precision, recall = diversity.precision_recall(self.real_features, fid_module.embed(self.fid.classifier, images))
        coverage = diversity.mode_coverage(diversity.class_histogram(self.fid.classifier, images), self.teacher_hist)
        return {"fid": self.fid(images), "precision": precision, "recall": recall,
                "mse_to_teacher": (images - self.teacher_images).pow(2).mean().item(),
                "hf_ratio": metrics.high_frequency_ratio(images, self.teacher_images),
                "band_ratios": metrics.band_ratios(images, self.teacher_images).tolist(),
                "gram_distance": metrics.gram_distance(self.conv1(images), self.teacher_conv1),
                "class_tv_to_teacher": coverage["tv"]}
