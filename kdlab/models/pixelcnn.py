"""PixelCNN (van den Oord et al. 2016, arXiv 1601.06759) and gated PixelCNN (arXiv 1606.05328)
over K intensity levels.

An image of D = H * W pixels (one channel) is modelled autoregressively in raster order,

    log p(x) = sum_i log p(x_i | x_<i),    p(x_i | x_<i) = softmax(logits[:, :, r, c])

so the logits at pixel i may depend only on pixels < i. :class:`PixelCNN` does it with masked
convolutions: the first layer (mask "A") never sees the current pixel, later layers (mask "B") may
see their own position; residual blocks are those of the paper (1x1 down, masked 3x3, 1x1 up).
:class:`GatedPixelCNN` splits the receptive field into a vertical stack (rows above) and a
horizontal stack (pixels to the left), which has no blind spot: every earlier pixel within its
receptive field (about ``n_layers + 3`` rows up and as many columns to each side) is reached. Logits have the class axis at dim 1,
``[N, K, H, W]``, the layout the KL distillation of notebook 03 works on.

bits/dim = -log2 p(x) / D, for images quantised to K levels (a discrete likelihood, so numbers for
different K are not comparable).
"""
from __future__ import annotations

import copy
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


class Autoregressive(nn.Module):
    """What every raster-order model over K levels shares: input checks, log-likelihood, bits/dim
    and sampling. Subclasses set ``levels`` and ``img_size`` and define :meth:`logits_from_input`."""
    levels: int
    img_size: int

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 1 or x.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise ValueError(f"expected integer levels of shape [N, 1, H, W], got {x.dtype} {list(x.shape)}")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= self.levels:
            raise ValueError(f"levels must lie in 0..{self.levels - 1}, got values from {lo} to {hi} "
                             "(quantise images with kdlab.data.quantize(images, levels))")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        inp = x.to(next(self.parameters()).dtype) / (self.levels - 1) * 2 - 1  # levels -> [-1, 1]
        return self.logits_from_input(inp)

    def logits_from_input(self, inp: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, K, H, W]`` from the real-valued input ``[N, 1, H, W]`` (levels mapped to
        [-1, 1]); differentiable in the input, which is how the causality test inspects it."""
        raise NotImplementedError

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
                # rows > r cannot influence row r (no path reaches them), so feed rows 0..r only
                probs = F.softmax(self(x[:, :, : r + 1])[:, :, r, c].float() / temperature, dim=1)  # (n, K)
                cdf = probs.cumsum(1)
                x[:, 0, r, c] = (cdf < u[:, r, c, None]).sum(1).clamp_max(self.levels - 1)
        return x


def _check_config(levels, hidden, channels) -> None:
    if channels != 1:
        raise ValueError(f"channels={channels!r} is not supported; this PixelCNN models one channel (1)")
    if not isinstance(levels, int) or not 2 <= levels <= 256:
        raise ValueError(f"levels={levels!r} is not valid; expected an integer in 2..256")
    if not isinstance(hidden, int) or hidden < 2 or hidden % 2:
        raise ValueError(f"hidden={hidden!r} is not valid; expected an even integer >= 2")


@register
class PixelCNN(Autoregressive):
    """Per-pixel categorical model with masked convolutions: levels ``[N, 1, H, W]`` (int64 in
    0..K-1) -> logits ``[N, K, H, W]``. Its stacked 3x3 masks leave a *blind spot*: pixels up and to
    the right that no path reaches (notebook 01 draws it); :class:`GatedPixelCNN` removes it.

    Named blocks: ``input`` (7x7 mask A), ``blocks.res1`` ... ``blocks.res{n_blocks}``, ``head``.
    """

    def __init__(self, levels: int = 16, hidden: int = 64, n_blocks: int = 6, img_size: int = 28, channels: int = 1):
        super().__init__()
        _check_config(levels, hidden, channels)
        self.config = dict(levels=levels, hidden=hidden, n_blocks=n_blocks, img_size=img_size, channels=channels)
        self.levels, self.img_size = levels, img_size
        self.input = MaskedConv2d("A", 1, hidden, 7)
        self.blocks = nn.Sequential(OrderedDict((f"res{i + 1}", ResidualBlock(hidden)) for i in range(n_blocks)))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, levels, 1))

    def logits_from_input(self, inp: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.input(inp)))


def _gate(a: torch.Tensor) -> torch.Tensor:
    """tanh(first half of the channels) * sigmoid(second half): ``[N, 2C, H, W]`` -> ``[N, C, H, W]``."""
    f, g = a.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One layer of the gated PixelCNN (van den Oord et al. 2016, arXiv 1606.05328, figure 2).

    - vertical stack: a ``(k//2 + 1) x k`` convolution over the rows *up to and including* the
      current one (padding above and at the sides only);
    - horizontal stack: a ``1 x (k//2 + 1)`` convolution over the pixels to the left in the current
      row, including the current pixel except in the first layer (whose input is shifted one
      column right), plus the vertical features *shifted down one row* (so they hold rows above only);
    - both gated, ``y = tanh(W_f * x) * sigmoid(W_g * x)``; the horizontal stack is residual after
      the first layer.

    The union of the two stacks covers every pixel above and to the left within the receptive
    field: no blind spot.
    """

    def __init__(self, cin: int, hidden: int, kernel: int, first: bool):
        super().__init__()
        self.n, self.first = kernel // 2, first
        self.vertical = nn.Conv2d(cin, 2 * hidden, (self.n + 1, kernel))
        self.horizontal = nn.Conv2d(cin, 2 * hidden, (1, self.n + 1))
        self.v_to_h = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.h_out = nn.Conv2d(hidden, hidden, 1)

    def forward(self, vh: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        v, h = vh  # (N, C_in, H, W) each
        n = self.n
        v_pre = self.vertical(F.pad(v, (n, n, n, 0)))  # row r sees rows r-n..r: (N, 2C, H, W)
        v_down = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # row r now holds rows r-n-1..r-1 only
        h_in = F.pad(h, (1, 0))[..., :-1] if self.first else h  # first layer: exclude the current pixel
        h_pre = self.horizontal(F.pad(h_in, (n, 0))) + self.v_to_h(v_down)  # (N, 2C, H, W)
        h_new = self.h_out(_gate(h_pre))
        return _gate(v_pre), h_new if self.first else h + h_new


@register
class GatedPixelCNN(Autoregressive):
    """Gated PixelCNN without blind spot: levels ``[N, 1, H, W]`` (int64 in 0..K-1) -> logits
    ``[N, K, H, W]``. A first :class:`GatedLayer` with a 7-wide kernel, ``n_layers - 1`` with 3-wide
    kernels, then ReLU, 1x1, ReLU, 1x1 on the horizontal stack.

    Named blocks: ``blocks.gated1`` ... ``blocks.gated{n_layers}`` (each returns the pair
    ``(vertical, horizontal)``), ``head``.
    """

    def __init__(self, levels: int = 16, hidden: int = 32, n_layers: int = 8, img_size: int = 28, channels: int = 1):
        super().__init__()
        _check_config(levels, hidden, channels)
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers={n_layers!r} is not valid; expected an integer >= 1")
        self.config = dict(levels=levels, hidden=hidden, n_layers=n_layers, img_size=img_size, channels=channels)
        self.levels, self.img_size = levels, img_size
        layers = [GatedLayer(1, hidden, 7, first=True)] + [GatedLayer(hidden, hidden, 3, first=False)
                                                           for _ in range(n_layers - 1)]
        self.blocks = nn.Sequential(OrderedDict((f"gated{i + 1}", layer) for i, layer in enumerate(layers)))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, 2 * hidden, 1), nn.ReLU(), nn.Conv2d(2 * hidden, levels, 1))

    def logits_from_input(self, inp: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks((inp, inp))[1])


def receptive_field(model: Autoregressive, row: int, col: int, seed: int = 0) -> torch.Tensor:
    """Which input pixels reach the logits at ``(row, col)``, ``[H, W]`` bool, read from gradients:
    the derivative of those logits with respect to a random input image is nonzero exactly where a
    path exists. Uses a float64 copy of ``model`` with weights redrawn from N(0, 0.3^2) (seeded), so
    that no weight happens to be zero and the map shows the architecture, not a training run."""
    probe = copy.deepcopy(model).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    size = model.img_size
    if not (0 <= row < size and 0 <= col < size):
        raise ValueError(f"pixel ({row}, {col}) is outside the {size}x{size} image")
    inp = torch.randn(1, 1, size, size, generator=g, dtype=torch.float64, requires_grad=True)
    probe.logits_from_input(inp)[0, :, row, col].sum().backward()
    return inp.grad[0, 0] != 0
