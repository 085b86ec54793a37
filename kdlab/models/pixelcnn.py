"""PixelCNN (van den Oord et al. 2016, arXiv 1601.06759) over K intensity levels.

An image of D = H * W pixels (one channel) is modelled autoregressively in raster order,

    log p(x) = sum_i log p(x_i | x_<i),    p(x_i | x_<i) = softmax(logits[:, :, r, c])

with masked convolutions: the first layer (mask "A") never sees the current pixel, later layers
(mask "B") may see their own position, so logits at pixel i depend only on pixels < i. Residual
blocks are those of the paper (1x1 down, masked 3x3, 1x1 up). Logits have the class axis at dim 1,
``[N, K, H, W]``, the layout the KL distillation of notebook 03 works on.

bits/dim = -log2 p(x) / D, for images quantised to K levels (a discrete likelihood, so numbers for
different K are not comparable).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import progress_bar
from .registry import register


class MaskedConv2d(nn.Conv2d):
    """Conv2d whose kernel is zeroed at and after the centre (mask "A") or after it (mask "B")."""

    def __init__(self, mask_type: str, cin: int, cout: int, kernel_size: int):
        super().__init__(cin, cout, kernel_size, padding=kernel_size // 2)
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type={mask_type!r} is not valid; allowed values: 'A', 'B'")
        k, c = kernel_size, kernel_size // 2
        mask = torch.ones(k, k)
        mask[c, c + (mask_type == "B"):] = 0  # centre row: the centre itself (A) and what follows
        mask[c + 1:] = 0  # every row below the centre
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class ResidualBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden // 2, 1), nn.ReLU(),
                                 MaskedConv2d("B", hidden // 2, hidden // 2, 3), nn.ReLU(),
                                 nn.Conv2d(hidden // 2, hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


@register
class PixelCNN(nn.Module):
    """Per-pixel categorical model: levels ``[N, 1, H, W]`` (int64 in 0..K-1) -> logits ``[N, K, H, W]``.

    Named blocks: ``input`` (7x7 mask A), ``blocks.res1`` ... ``blocks.res{n_blocks}``, ``head``.
    """

    def __init__(self, levels: int = 16, hidden: int = 64, n_blocks: int = 6, img_size: int = 28, channels: int = 1):
        super().__init__()
        if channels != 1:
            raise ValueError(f"channels={channels!r} is not supported; this PixelCNN models one channel (1)")
        if not isinstance(levels, int) or not 2 <= levels <= 256:
            raise ValueError(f"levels={levels!r} is not valid; expected an integer in 2..256")
        if not isinstance(hidden, int) or hidden < 2 or hidden % 2:
            raise ValueError(f"hidden={hidden!r} is not valid; expected an even integer >= 2")
        self.config = dict(levels=levels, hidden=hidden, n_blocks=n_blocks, img_size=img_size, channels=channels)
        self.levels, self.img_size = levels, img_size
        self.input = MaskedConv2d("A", 1, hidden, 7)
        self.blocks = nn.Sequential(OrderedDict((f"res{i + 1}", ResidualBlock(hidden)) for i in range(n_blocks)))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, levels, 1))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 1 or x.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise ValueError(f"expected integer levels of shape [N, 1, H, W], got {x.dtype} {list(x.shape)}")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= self.levels:
            raise ValueError(f"levels must lie in 0..{self.levels - 1}, got values from {lo} to {hi} "
                             "(quantise images with kdlab.data.quantize(images, levels))")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        inp = x.to(self.input.weight.dtype) / (self.levels - 1) * 2 - 1  # levels -> [-1, 1]
        return self.logits_from_input(inp)

    def logits_from_input(self, inp: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, K, H, W]`` from the real-valued input ``[N, 1, H, W]`` (levels mapped to
        [-1, 1]); differentiable in the input, which is how the causality test inspects it."""
        return self.head(self.blocks(self.input(inp)))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, ``[N]``: the sum over pixels of log softmax(logits)[x_i]."""
        logits = self(x)
        logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)  # (N, K, H, W)
        return logp.gather(1, x.long()).flatten(1).sum(1)

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """-log2 p(x) / (H * W), ``[N]``."""
        return -self.log_prob(x) / (x[0].numel() * math.log(2))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               device=None, progress: bool = True) -> torch.Tensor:
        """``n`` images ``[n, 1, H, W]`` of levels, drawn pixel by pixel in raster order (H * W forward
        passes, a progress bar over rows). Uniform draws come from ``generator`` on the CPU, so a seed
        gives the same images on any device. ``temperature`` divides the logits."""
        if temperature <= 0:
            raise ValueError(f"temperature={temperature!r} is not valid; expected a value > 0")
        device = device or next(self.parameters()).device
        h = w = self.img_size
        x = torch.zeros(n, 1, h, w, dtype=torch.long, device=device)
        u = torch.rand(n, h, w, generator=generator).to(device)  # (n, H, W) uniforms for inverse-CDF draws
        for r in progress_bar(range(h), desc="sampling rows", disable=not progress, leave=False):
            for c in range(w):
                # rows > r cannot influence row r (every mask hides them), so feed rows 0..r only
                probs = F.softmax(self(x[:, :, : r + 1])[:, :, r, c].float() / temperature, dim=1)  # (n, K)
                cdf = probs.cumsum(1)
                x[:, 0, r, c] = (cdf < u[:, r, c, None]).sum(1).clamp_max(self.levels - 1)
        return x
