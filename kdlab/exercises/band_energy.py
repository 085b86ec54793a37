"""Assignment 05: the energy of images in radial frequency bands.

    def my_band_energies(images, bands) -> [len(bands)] float64

``images`` ``[N, C, H, W]``; ``bands`` a list of ``(lo, hi)`` in cycles per pixel; each band's energy
is ``sum over the FFT bins with lo <= radius < hi of |FFT(x - mean x)|^2 / (H W)^2``, averaged over
images and channels. Checked against closed forms (a cosine grating puts half its squared amplitude
in its band; bands that tile [0, 1) sum to the pixel variance, Parseval) and against
:func:`kdlab.evaluation.metrics.band_energies`.
"""
from __future__ import annotations

import math

import torch

from ..evaluation import metrics
from .core import ExerciseError, Forbidden, Part, close, run_parts, tensor

FORBIDDEN = Forbidden("kdlab's spectrum metrics", python=(metrics,))


def _energies(fn, images, bands) -> torch.Tensor:
    out = tensor(fn(images, bands), "my_band_energies").detach()
    if out.shape != (len(bands),):
        raise ExerciseError(f"expected one energy per band, shape [{len(bands)}], got {list(out.shape)}")
    if not torch.isfinite(out).all():
        raise ExerciseError("inf or nan in the energies")
    return out.double()


def _grating(fn, seed: int) -> int:
    """A cosine of f cycles per pixel and amplitude A has variance A^2 / 2, all of it at radius f."""
    size, f, amp = (32, 0.25, 0.8) if seed == 0 else (24, 1 / 6, 1.3)
    x = torch.arange(size, dtype=torch.float64)
    grating = (amp * torch.cos(2 * math.pi * f * x) + 0.3)[None, None, None, :].repeat(2, 1, size, 1)  # [2, 1, size, size]
    bands = [(0.0, f - 0.05), (f - 0.05, f + 0.05), (f + 0.05, 1.0)]
    out = _energies(fn, grating, bands)
    want = torch.tensor([0.0, amp ** 2 / 2, 0.0], dtype=torch.float64)
    if out[0] > 1e-6 * want[1]:
        raise ExerciseError("the lowest band holds the image mean (the DC term): subtract each image's mean first")
    if close(out, want * size, rtol=1e-6) or close(out, want * size * size, rtol=1e-6):
        raise ExerciseError("the energy is too large by H W or (H W)^2: divide |FFT|^2 by (H W)^2, so that the bands "
                            "sum to the pixel variance (Parseval)")
    if not close(out, want, rtol=1e-6, atol=1e-9):
        raise ExerciseError(f"a cosine grating of {f:.3g} cycles/pixel and amplitude {amp} must put {amp ** 2 / 2:.4g} "
                            f"in the band around {f:.3g} and nothing elsewhere; got {[round(v, 4) for v in out.tolist()]}. "
                            "Measure each FFT bin's radius in cycles per pixel (torch.fft.fftfreq)")
    return 3


def _bands(fn, seed: int) -> int:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 2, 16, 12, generator=g, dtype=torch.float64) + 0.5
    tiling = [(0.0, 0.1), (0.1, 0.25), (0.25, 0.4), (0.4, 1.0)]
    out = _energies(fn, images, tiling)
    variance = (images - images.mean((-2, -1), keepdim=True)).pow(2).mean()
    if abs(out.sum() - variance) > 1e-9 * variance:
        if abs(out.sum() - variance * 16 * 12) < 1e-6 * variance * 192:
            raise ExerciseError("the bands sum to H W times the variance: divide |FFT|^2 by (H W)^2")
        if close(out, metrics.band_energies(images[:1], tiling)):
            raise ExerciseError("average over all images and channels, not only the first")
        raise ExerciseError(f"bands that tile [0, 1) must sum to the mean pixel variance {variance.item():.5f} "
                            f"(Parseval); yours sum to {out.sum().item():.5f}")
    if not close(out, metrics.band_energies(images, tiling), rtol=1e-6, atol=1e-12):
        raise ExerciseError("the energies sum to the variance but are split across bands differently: a bin belongs "
                            "to [lo, hi) when lo <= radius < hi, with the radius sqrt(fy^2 + fx^2) in cycles per pixel")
    return 2


PARTS = {"grating": Part("a grating's energy in its band (closed form)", _grating),
         "parseval": Part("bands that tile [0, 1) sum to the variance", _bands)}


def check_band_energies(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check ``my_band_energies`` (parts ``grating``, ``parseval``); ``hidden``: the graders' variant."""
    run_parts(fn, PARTS, part, hidden, FORBIDDEN, "my_band_energies")
