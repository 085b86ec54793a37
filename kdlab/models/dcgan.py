"""Generators and discriminators (DCGAN, arXiv 1511.06434) of any size.

One class gives the teacher and every student: ``width`` multiplies all channel counts (parameters
grow about as ``width**2``) and ``depth`` sets the convolutions per resolution. Blocks have stable
names (``stem``, ``blocks.up1``, ``blocks.up2``, ..., ``head``) so :mod:`kdlab.taps` can read their
activations by name.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import get_device
from .registry import register


def _upsamplings(img_size: int) -> tuple[int, int]:
    """(number of 2x stages, base resolution): 28 = 7 * 2**2, 32 = 4 * 2**3."""
    if img_size == 28:
        return 2, 7
    if img_size == 32:
        return 3, 4
    raise ValueError(f"img_size={img_size!r} is not valid; allowed values: 28, 32")


def is_generator_size(spec) -> bool:
    """a [width, stem channels or None] pair of positive integers"""
    return (isinstance(spec, (list, tuple)) and len(spec) == 2 and all(
        v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1) for v in spec) and spec[0] is not None)


def check_size(width: int, depth: int) -> None:
    """Raise ``ValueError`` unless ``width`` and ``depth`` are integers >= 1."""
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width={width!r} is not valid; expected an integer >= 1")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth={depth!r} is not valid; expected an integer >= 1")


def check_classes(n_classes: int) -> None:
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 0:
        raise ValueError(f"n_classes={n_classes!r} is not valid; expected an integer >= 0 (0: unconditional)")


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register
class Generator(nn.Module):
    """DCGAN generator: noise ``z [N, z_dim]`` -> images ``[N, channels, img_size, img_size]`` in
    (-1, 1).

    Channels per stage: ``width * 2**(n_up - i)`` (``stem_channels`` overrides the first, which
    holds most of a tiny generator's weights); for 28x28 the stages are 7x7 -> 14x14 -> 28x28,
    for 32x32 they are 4x4 -> 8x8 -> 16x16 -> 32x32. Each upsampling block is a stride-2
    transposed convolution followed by ``depth - 1`` 3x3 convolutions, all with BatchNorm + ReLU.

    With ``n_classes > 0`` the generator is conditional and the class travels *inside the noise*: its
    input is ``[z, one_hot(y)]`` of width ``noise_dim = z_dim + n_classes`` (:meth:`sample_noise`
    draws both). A student built with the same ``z_dim`` and ``n_classes`` takes the same noise, so
    same-noise distillation needs no change.
    """

    def __init__(self, z_dim: int = 64, width: int = 32, img_size: int = 28, channels: int = 1, depth: int = 1,
                 stem_channels: int | None = None, n_classes: int = 0):
        super().__init__()
        check_size(width, depth)
        check_classes(n_classes)
        self.config = dict(z_dim=z_dim, width=width, img_size=img_size, channels=channels, depth=depth)
        if n_classes:
            self.config["n_classes"] = n_classes
        n_up, base = _upsamplings(img_size)
        ch = [width * 2 ** (n_up - i) for i in range(n_up + 1)]  # channels at 7x7 (or 4x4) ... full size
        if stem_channels is not None:  # the stem (z_dim * ch0 * base^2 weights) dominates tiny students
            if not isinstance(stem_channels, int) or stem_channels < 1:
                raise ValueError(f"stem_channels={stem_channels!r} is not valid; expected an integer >= 1")
            ch[0] = self.config["stem_channels"] = stem_channels
        self.z_dim, self.n_classes, self.noise_dim = z_dim, n_classes, z_dim + n_classes
        self.stem = nn.Sequential(nn.ConvTranspose2d(self.noise_dim, ch[0], base, 1, 0, bias=False),
                                  nn.BatchNorm2d(ch[0]), nn.ReLU(inplace=True))  # (N, ch0, base, base)
        blocks = OrderedDict()
        for i in range(1, n_up + 1):
            layers = [nn.ConvTranspose2d(ch[i - 1], ch[i], 4, 2, 1, bias=False), nn.BatchNorm2d(ch[i]),
                      nn.ReLU(inplace=True)]
            for _ in range(depth - 1):
                layers += _conv_bn_relu(ch[i], ch[i])
            blocks[f"up{i}"] = nn.Sequential(*layers)  # (N, ch_i, base * 2**i, base * 2**i)
        self.blocks = nn.Sequential(blocks)
        self.head = nn.Sequential(nn.Conv2d(ch[-1], channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.noise_dim:
            what = f"[N, {self.z_dim} + {self.n_classes}] (z, then the one-hot class)" if self.n_classes else f"[N, {self.z_dim}]"
            raise ValueError(f"expected noise of shape {what}, got {list(z.shape)}; draw it with sample_noise")
        return self.head(self.blocks(self.stem(z[:, :, None, None])))

    def sample_noise(self, n: int, generator: torch.Generator | None = None, device=None,
                     labels: torch.Tensor | None = None) -> torch.Tensor:
        """Standard normal noise ``[n, z_dim]``, drawn on the CPU so seeds give the same z on any
        device, then moved to ``device`` (``None``: where the generator is). A conditional generator
        appends ``one_hot(labels)`` (``labels`` ``[n]``, drawn uniformly after z when ``None``):
        ``[n, z_dim + n_classes]``."""
        z = torch.randn(n, self.z_dim, generator=generator)
        if self.n_classes:
            if labels is None:
                labels = torch.randint(self.n_classes, (n,), generator=generator)
            labels = torch.as_tensor(labels).cpu()
            if labels.shape != (n,) or labels.min() < 0 or labels.max() >= self.n_classes:
                raise ValueError(f"labels must be {n} class indices in 0..{self.n_classes - 1}, got {labels!r}")
            z = torch.cat([z, F.one_hot(labels.long(), self.n_classes).float()], dim=1)
        elif labels is not None:
            raise ValueError("labels given to an unconditional generator (n_classes=0)")
        return z.to(next(self.parameters()).device if device is None else get_device(device))

    def labels(self, noise: torch.Tensor) -> torch.Tensor:
        """The class of each noise vector ``[N, noise_dim]`` -> ``[N]`` (conditional generators only)."""
        if not self.n_classes:
            raise ValueError("labels(): this generator is unconditional (n_classes=0)")
        return noise[:, self.z_dim:].argmax(1)


@register
class Discriminator(nn.Module):
    """DCGAN discriminator: images ``[N, channels, img_size, img_size]`` -> logits ``[N]``.

    Mirror of :class:`Generator`: stride-2 convolutions (``blocks.down1`` ...) with LeakyReLU(0.2),
    BatchNorm on all but the first block, then a linear head on the flattened base-resolution map.

    With ``n_classes > 0`` it is a projection discriminator (Miyato and Koyama 2018, arXiv
    1802.05637): ``D(x, y) = head(h) + <embed(y), h>`` with ``h`` the flattened features, so it
    judges whether ``x`` is a real image *of class y*.
    """

    def __init__(self, width: int = 32, img_size: int = 28, channels: int = 1, depth: int = 1, n_classes: int = 0):
        super().__init__()
        check_size(width, depth)
        check_classes(n_classes)
        self.config = dict(width=width, img_size=img_size, channels=channels, depth=depth)
        if n_classes:
            self.config["n_classes"] = n_classes
        self.n_classes = n_classes
        n_down, base = _upsamplings(img_size)
        ch = [channels] + [width * 2 ** i for i in range(n_down)]
        blocks = OrderedDict()
        for i in range(1, n_down + 1):
            layers = [nn.Conv2d(ch[i - 1], ch[i], 4, 2, 1, bias=i == 1)]
            layers += [nn.BatchNorm2d(ch[i])] if i > 1 else []
            layers += [nn.LeakyReLU(0.2, inplace=True)]
            for _ in range(depth - 1):
                layers += [nn.Conv2d(ch[i], ch[i], 3, 1, 1, bias=False), nn.BatchNorm2d(ch[i]),
                           nn.LeakyReLU(0.2, inplace=True)]
            blocks[f"down{i}"] = nn.Sequential(*layers)  # (N, ch_i, size / 2**i, size / 2**i)
        self.blocks = nn.Sequential(blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch[-1] * base * base, 1))
        if n_classes:
            self.embed = nn.Embedding(n_classes, ch[-1] * base * base)
            bound = (ch[-1] * base * base) ** -0.5  # the head's scale (nn.Linear's default), not N(0, 1)
            nn.init.uniform_(self.embed.weight, -bound, bound)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if (labels is None) != (self.n_classes == 0):
            raise ValueError(f"this discriminator has n_classes={self.n_classes}: pass labels [N] exactly when "
                             "n_classes > 0")
        h = self.blocks(x)  # (N, ch, base, base)
        out = self.head(h).squeeze(1)  # (N,)
        if labels is not None:
            out = out + (self.embed(labels) * h.flatten(1)).sum(1)  # projection term <embed(y), h>
        return out
