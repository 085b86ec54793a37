"""Procedural texture images with known spatial-frequency content.

Every image has its spectral energy in one radial frequency band (cycles per pixel, Nyquist = 0.5),
so later notebooks can measure exactly which bands a student keeps. Band-limited noise has all of
its energy inside the band; gratings and plaids have one frequency inside it and, since that
frequency is not a whole number of cycles per image, leak a little into neighbouring FFT bins
(over 85% stays within one bin of the band; a test checks this). Three kinds of pattern:

- ``grating``: ``cos(2 pi f (x cos(theta) + y sin(theta)) + phi)``: one frequency ``f``;
- ``plaid``: ``cos(2 pi fx x + phi1) * cos(2 pi fy y + phi2)``, a smooth checkerboard whose
  frequencies are ``(+-fx, +-fy)``, radial frequency ``sqrt(fx^2 + fy^2) = f``;
- ``noise``: white Gaussian noise filtered in the Fourier domain to the band's annulus.

Each image is scaled to [-1, 1] (a pattern minus its mean, divided by its maximum magnitude).
"""
from __future__ import annotations

import math

import torch

# name -> [low, high) radial frequency in cycles per pixel
BANDS: dict[str, tuple[float, float]] = {"low": (0.03, 0.10), "mid": (0.10, 0.22), "high": (0.22, 0.45)}
KINDS = ("grating", "plaid", "noise")


def make_textures(n: int, size: int = 28, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``n`` images ``[n, 1, size, size]`` in [-1, 1], band labels ``[n]`` (index into ``BANDS``) and
    the pattern kind of each image. Image ``i`` has band ``i % 3`` and kind ``(i // 3) % 3``, so every
    band holds every kind (equally when ``n`` is a multiple of 9); frequencies, orientations and
    phases are drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(n)
    band, kind = i % len(BANDS), (i // len(BANDS)) % len(KINDS)  # (n,), (n,)
    lo = torch.tensor([b[0] for b in BANDS.values()], dtype=torch.float64)[band]
    hi = torch.tensor([b[1] for b in BANDS.values()], dtype=torch.float64)[band]
    u = torch.rand(n, 4, generator=g, dtype=torch.float64)  # (n, 4) uniforms
    white = torch.randn(n, size, size, generator=g, dtype=torch.float64)
    f = (lo + (hi - lo) * u[:, 0])[:, None, None]  # (n, 1, 1) radial frequency, cycles per pixel
    ax = torch.arange(size, dtype=torch.float64)
    y, x = ax[None, :, None], ax[None, None, :]  # (1, H, 1), (1, 1, W)
    two_pi = 2 * math.pi
    # grating: cos(2 pi f (x cos(theta) + y sin(theta)) + phi)
    theta, phi = math.pi * u[:, 1, None, None], two_pi * u[:, 2, None, None]
    grating = torch.cos(two_pi * f * (x * torch.cos(theta) + y * torch.sin(theta)) + phi)
    # plaid: cos(2 pi fx x + phi1) cos(2 pi fy y + phi2), fx = f cos(a), fy = f sin(a), a in [0.1, 0.4] pi
    a = (math.pi / 2) * (0.2 + 0.6 * u[:, 1, None, None])
    plaid = torch.cos(two_pi * f * torch.cos(a) * x + phi) * torch.cos(two_pi * f * torch.sin(a) * y
                                                                       + two_pi * u[:, 3, None, None])
    # noise: white noise with every Fourier coefficient outside [lo, hi) set to zero
    freq = torch.fft.fftfreq(size, dtype=torch.float64)
    radius = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)[None]  # (1, H, W)
    mask = (radius >= lo[:, None, None]) & (radius < hi[:, None, None])
    noise = torch.fft.ifft2(torch.fft.fft2(white) * mask).real
    img = torch.where((kind == 0)[:, None, None], grating, torch.where((kind == 1)[:, None, None], plaid, noise))
    img = img - img.mean((1, 2), keepdim=True)
    img = img / img.abs().amax((1, 2), keepdim=True).clamp_min(1e-12)
    return img.float()[:, None], band, [KINDS[k] for k in kind.tolist()]
