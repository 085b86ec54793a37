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
- ``class_tv_to_teacher``: total-variation distance between the digit-class histograms;
- ``fid_ci``, ``precision_ci``, ``recall_ci``, ``hf_ratio_ci``, ``band_ratios_ci``: bootstrap 95%
  intervals ``[lo, hi]`` (:mod:`.intervals`). FID and band ratios resample the ``n`` generated
  images (band ratios together with the teacher's images for the same inputs); precision resamples
  the generated images against the fixed real manifold, recall resamples the ``n`` real digits
  against the fixed generated manifold (its k-NN radii are not re-estimated), so the recall interval
  leaves out the generated set's own sampling noise. All cover one trained network: seeds are
  compared over several runs (``tools/seed_intervals.py``).

:meth:`Evaluator.fid_difference` gives the paired interval of FID(a) - FID(b) for two students
scored on the same inputs: the comparison to use when asking which of two students is better.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import data, taps
from ..utils import get_device
from . import diversity, intervals, metrics
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
        self.teacher_band_power = metrics.image_band_power(self.teacher_images.cpu())  # (n, bands)
        self.real_radii = diversity.knn_radii(self.real_features)

    @classmethod
    @torch.no_grad()
    def for_generator(cls, teacher: nn.Module, n: int = 500, seed: int = 0, device="auto") -> "Evaluator":
        """The protocol for generators ``z -> image``: ``n`` noise vectors ``evaluator.z`` ``[n, z_dim]``
        drawn from ``torch.Generator().manual_seed(10_000 + seed)`` and the teacher's images for them;
        a conditional teacher gets every class equally often (``labels = arange(n) % n_classes``,
        appended one-hot). Make each student's images from ``evaluator.z``."""
        teacher.to(get_device(device)).eval()
        classes = getattr(teacher, "n_classes", 0)
        labels = torch.arange(n) % classes if classes else None
        z = teacher.sample_noise(n, torch.Generator().manual_seed(10_000 + seed), labels=labels)
        evaluator = cls(teacher(z))
        evaluator.z = z
        return evaluator

    @torch.no_grad()
    def conv1(self, images: torch.Tensor) -> torch.Tensor:
        """The FID classifier's first-layer features of ``images``, ``[N, 32, 14, 14]`` float64."""
        dev = self.teacher_images.device
        return taps.features(self.fid.classifier, ["conv1"], images.to(dev))[1]["conv1"].double().cpu()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """FID-classifier features ``[n, 128]`` (float64) of a student's images for the evaluator's inputs."""
        if images.shape != self.teacher_images.shape:
            raise ValueError(f"expected the student's images for the evaluator's inputs, shape "
                             f"{list(self.teacher_images.shape)}, got {list(images.shape)}")
        return embed(self.fid.classifier, images)

    def fid_difference(self, images_a: torch.Tensor, images_b: torch.Tensor) -> intervals.Interval:
        """FID(a) - FID(b) with its paired bootstrap interval (both made from the evaluator's inputs)."""
        return intervals.fid_difference(self.features(images_a), self.features(images_b), self.fid.mu, self.fid.sigma)

    def _band_ratio_intervals(self, images: torch.Tensor) -> list[list[float]]:
        """Intervals of each band's ratio and of the share above 0.25 cycles/pixel (the last entry)."""
        student, teacher = metrics.image_band_power(images.cpu()), self.teacher_band_power  # (n, bands)
        bands = [[b] for b in range(student.shape[1])] + [[b for b, (lo, _) in enumerate(metrics.BANDS) if lo >= 0.25]]

        def ratio(cols):
            def stat(idx):
                s, t = student[idx].sum(0), teacher[idx].sum(0)  # (bands,)
                return (s[cols].sum() / s.sum() / (t[cols].sum() / t.sum())).item()
            return stat
        return [list(intervals.bootstrap(ratio(cols), len(student))[1:3]) for cols in bands]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict:
        feats = self.features(images)
        fid = intervals.fid_interval(feats, self.fid.mu, self.fid.sigma)
        in_real = diversity.inside(feats, self.real_features, self.real_radii)  # precision, per sample
        in_fake = diversity.inside(self.real_features, feats, diversity.knn_radii(feats))  # recall, per real digit
        precision, recall = intervals.mean_interval(in_real), intervals.mean_interval(in_fake)
        coverage = diversity.mode_coverage(diversity.class_histogram(self.fid.classifier, images), self.teacher_hist)
        bands_ci = self._band_ratio_intervals(images)
        images = images.to(self.teacher_images.device)
        return {"fid": fid.estimate, "fid_ci": [fid.lo, fid.hi], "precision": precision.estimate,
                "precision_ci": [precision.lo, precision.hi], "recall": recall.estimate, "recall_ci": [recall.lo, recall.hi],
                "mse_to_teacher": (images - self.teacher_images).pow(2).mean().item(),
                "hf_ratio": metrics.high_frequency_ratio(images, self.teacher_images), "hf_ratio_ci": bands_ci[-1],
                "band_ratios": metrics.band_ratios(images, self.teacher_images).tolist(), "band_ratios_ci": bands_ci[:-1],
                "gram_distance": metrics.gram_distance(self.conv1(images), self.teacher_conv1),
                "class_tv_to_teacher": coverage["tv"]}
