"""The small digit classifier whose features define kdlab's FID (:mod:`kdlab.evaluation.fid`)."""
from __future__ import annotations

import torch
from torch import nn

from .dcgan import check_size
from .registry import register


@register
class Classifier(nn.Module):
    """Small CNN for 28x28 digits, the feature extractor of kdlab's FID: images ``[N, C, H, W]`` in
    [-1, 1] -> class logits ``[N, n_classes]``; :meth:`embed` returns the ``feature_dim`` activations
    of the ``features`` block (after ReLU) that FID compares.

    Blocks: ``conv1`` (3x3, ``width`` channels, ReLU, 2x2 max-pool), ``conv2`` (3x3, 2 * width, ReLU,
    max-pool), ``features`` (linear to ``feature_dim``, ReLU), ``head`` (linear to classes).
    """

    def __init__(self, width: int = 32, feature_dim: int = 128, n_classes: int = 10, img_size: int = 28,
                 channels: int = 1):
        super().__init__()
        check_size(width, 1)
        self.config = dict(width=width, feature_dim=feature_dim, n_classes=n_classes, img_size=img_size,
                           channels=channels)
        self.conv1 = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        side = img_size // 4
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[N, feature_dim]``."""
        return self.features(self.conv2(self.conv1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
