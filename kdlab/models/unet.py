"""A small U-Net for diffusion on 28x28 (or 32x32) images: ``model(z_t, t) -> v`` (notebook 06).

Three resolutions (28 -> 14 -> 7), one residual block per resolution on the way down and one on
the way up (with the skip connection concatenated), GroupNorm + SiLU, and a sinusoidal embedding
of the diffusion time ``t`` in [0, 1] added to every block. Blocks have stable names (``down0``,
``down1``, ``down2``, ``mid``, ``up2``, ``up1``, ``up0``) for :mod:`kdlab.taps`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of diffusion times ``t`` ``[N]`` in [0, 1] -> ``[N, dim]``:
    ``[sin(1000 t w_k), cos(1000 t w_k)]`` with frequencies ``w_k = 10000^(-k / (dim/2))``."""
    half = dim // 2
    w = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)  # (dim/2,)
    angles = 1000.0 * t.float()[:, None] * w[None]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    """``x [N, cin, H, W]``, ``emb [N, E]`` -> ``[N, cout, H, W]``: two 3x3 convolutions with the time
    embedding added in between, plus a (1x1 when channels change) shortcut."""

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


@register
class UNet(nn.Module):
    """``forward(z_t [N, C, S, S], t [N]) -> [N, C, S, S]`` (the v-prediction in notebook 06).

    ``channels`` per resolution (full, half, quarter), e.g. ``(16, 32, 64)``; ``S`` is 28 or 32.
    """

    def __init__(self, channels: int = 1, widths: tuple[int, int, int] | list[int] = (16, 32, 64), emb_dim: int = 64,
                 img_size: int = 28):
        super().__init__()
        widths = list(widths)
        if len(widths) != 3 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths={widths!r} is not valid; expected three positive integers (full, half, quarter resolution)")
        if any(w > 8 and w % 8 for w in widths):
            raise ValueError(f"widths={widths!r} is not valid; GroupNorm uses 8 groups, so each width must be at most 8 "
                             "or a multiple of 8")
        if not isinstance(emb_dim, int) or emb_dim < 2 or emb_dim % 2:
            raise ValueError(f"emb_dim={emb_dim!r} is not valid; expected an even integer >= 2 (sine and cosine halves)")
        if img_size not in (28, 32):
            raise ValueError(f"img_size={img_size!r} is not valid; allowed values: 28, 32")
        self.config = dict(channels=channels, widths=widths, emb_dim=emb_dim, img_size=img_size)
        a, b, c = widths
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(channels, a, 3, padding=1)
        self.down0, self.pool0 = ResBlock(a, a, emb_dim), nn.Conv2d(a, a, 3, stride=2, padding=1)  # 28 -> 14
        self.down1, self.pool1 = ResBlock(a, b, emb_dim), nn.Conv2d(b, b, 3, stride=2, padding=1)  # 14 -> 7
        self.down2, self.mid = ResBlock(b, c, emb_dim), ResBlock(c, c, emb_dim)
        self.up2 = ResBlock(2 * c, b, emb_dim)
        self.lift1 = nn.Conv2d(b, b, 3, padding=1)
        self.up1 = ResBlock(2 * b, a, emb_dim)
        self.lift0 = nn.Conv2d(a, a, 3, padding=1)
        self.up0 = ResBlock(2 * a, a, emb_dim)
        self.head = nn.Sequential(_norm(a), nn.SiLU(), nn.Conv2d(a, channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)  # start as the zero predictor
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or t.shape != (x.shape[0],):
            raise ValueError(f"expected x [N, C, H, W] and t [N], got {list(x.shape)} and {list(t.shape)}")
        emb = self.time_mlp(time_embedding(t, self.emb_dim).to(x.dtype))  # (N, E)
        h0 = self.down0(self.stem(x), emb)  # (N, a, S, S)
        h1 = self.down1(self.pool0(h0), emb)  # (N, b, S/2, S/2)
        h2 = self.down2(self.pool1(h1), emb)  # (N, c, S/4, S/4)
        h = self.up2(torch.cat([self.mid(h2, emb), h2], 1), emb)  # (N, b, S/4, S/4)
        h = self.lift1(F.interpolate(h, size=h1.shape[-2:], mode="nearest"))  # (N, b, S/2, S/2)
        h = self.up1(torch.cat([h, h1], 1), emb)  # (N, a, S/2, S/2)
        h = self.lift0(F.interpolate(h, size=h0.shape[-2:], mode="nearest"))  # (N, a, S, S)
        return self.head(self.up0(torch.cat([h, h0], 1), emb))
