"""Quality and cost metrics for teachers and students.

- :func:`radial_spectrum`, :func:`band_shares`, :func:`band_energies`, :func:`band_ratios` and
  :func:`high_frequency_ratio` (per image: :func:`image_band_power`):
  which frequencies survive;
- :func:`gram_distance`: texture (style) statistics of feature maps;
- :func:`frechet_distance` and :func:`gaussian_stats` (the arithmetic of FID, :mod:`.fid`);
- :func:`count_macs` and :func:`seconds_per_image`: the cost of a generator.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from ..feature_losses import gram_matrix


def _power(images: torch.Tensor) -> torch.Tensor:
    """|FFT|^2 of each mean-subtracted image, ``[N, C, H, W]`` -> ``[N, C, H, W]`` (float64)."""
    x = images.detach().double()
    x = x - x.mean((-2, -1), keepdim=True)  # drop the DC term: brightness is not detail
    return torch.fft.fft2(x).abs() ** 2


def radial_frequency(h: int, w: int) -> torch.Tensor:
    """Radial frequency of every FFT bin in cycles per pixel, ``[H, W]`` (Nyquist = 0.5)."""
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def radial_spectrum(images: torch.Tensor, n_bins: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum of images ``[N, C, H, W]``.

    Returns ``(freqs [B + 1], power [B + 1])`` with ``B = n_bins`` (default ``min(H, W) // 2``):
    ring ``k`` holds the FFT bins whose radial frequency rounds to ``k * 0.5 / B`` cycles per pixel
    (ring 0 is the DC term, zero here; the corners beyond Nyquist join ring ``B``), and ``power`` is
    the mean ``|FFT(x - mean x)|^2`` over those bins, images and channels.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {list(images.shape)}")
    h, w = images.shape[-2:]
    n_bins = n_bins or min(h, w) // 2
    power = _power(images).mean((0, 1))  # (H, W)
    idx = torch.round(radial_frequency(h, w) * 2 * n_bins).long().clamp(max=n_bins)  # (H, W) ring of each bin
    total = torch.zeros(n_bins + 1, dtype=torch.float64).index_add_(0, idx.flatten(), power.flatten())
    count = torch.zeros(n_bins + 1, dtype=torch.float64).index_add_(0, idx.flatten(), torch.ones(h * w, dtype=torch.float64))
    freqs = torch.arange(n_bins + 1, dtype=torch.float64) * 0.5 / n_bins
    return freqs, total / count.clamp_min(1)


def high_frequency_share(images: torch.Tensor, cutoff: float = 0.25) -> float:
    """Share of the (non-DC) spectral energy at radial frequencies >= ``cutoff`` cycles per pixel."""
    power = _power(images).sum((0, 1))  # (H, W)
    r = radial_frequency(*images.shape[-2:])
    return (power[r >= cutoff].sum() / power.sum().clamp_min(1e-300)).item()


def high_frequency_ratio(student_images: torch.Tensor, teacher_images: torch.Tensor, cutoff: float = 0.25) -> float:
    """``high_frequency_share(student) / high_frequency_share(teacher)``: 1.0 means the student keeps
    the teacher's share of fine detail, below 1 it blurs, above 1 it adds high-frequency noise."""
    reference = high_frequency_share(teacher_images, cutoff)
    if reference == 0:
        raise ValueError(f"the teacher images have no energy above {cutoff} cycles/pixel; the ratio is undefined")
    return high_frequency_share(student_images, cutoff) / reference


# cycles/pixel; the last band includes the corners beyond Nyquist
BANDS = ((0.0, 0.125), (0.125, 0.25), (0.25, 0.375), (0.375, 1.0))


def band_shares(images: torch.Tensor, bands=BANDS) -> torch.Tensor:
    """Share of the non-DC spectral energy of images ``[N, C, H, W]`` in each radial frequency band
    ``[lo, hi)`` (cycles per pixel), ``[len(bands)]`` float64; bands that tile [0, 1) sum to 1."""
    if images.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {list(images.shape)}")
    for lo, hi in bands:
        if not 0 <= lo < hi:
            raise ValueError(f"band ({lo}, {hi}) is not valid; expected 0 <= lo < hi (cycles/pixel)")
    power = _power(images).sum((0, 1))  # (H, W)
    r = radial_frequency(*images.shape[-2:])
    total = power.sum().clamp_min(1e-300)
    return torch.stack([power[(r >= lo) & (r < hi)].sum() / total for lo, hi in bands])


def image_band_power(images: torch.Tensor, bands=BANDS) -> torch.Tensor:
    """Non-DC spectral power of each image ``[N, C, H, W]`` in each band ``[lo, hi)`` (summed over
    channels and the band's FFT bins), ``[N, len(bands)]`` float64. Summed over images and divided
    by the total it gives :func:`band_shares`; resampling its rows bootstraps them."""
    if images.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {list(images.shape)}")
    power = _power(images).sum(1)  # (N, H, W)
    r = radial_frequency(*images.shape[-2:])
    return torch.stack([power[:, (r >= lo) & (r < hi)].sum(1) for lo, hi in bands], dim=1)


def band_energies(images: torch.Tensor, bands=BANDS) -> torch.Tensor:
    """Absolute energy of images ``[N, C, H, W]`` in each radial frequency band ``[lo, hi)``, as the
    band's contribution to the pixel variance: ``sum over the band's FFT bins of |FFT(x - mean x)|^2 /
    (H W)^2``, averaged over images and channels, ``[len(bands)]`` float64. By Parseval's theorem,
    bands that tile [0, 1) sum to the mean per-image pixel variance. Unlike :func:`band_shares` it
    sees a student that loses energy everywhere (a flat image scores near 0 in every band)."""
    if images.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {list(images.shape)}")
    h, w = images.shape[-2:]
    power = _power(images).mean((0, 1)) / (h * w) ** 2  # (H, W)
    r = radial_frequency(h, w)
    return torch.stack([power[(r >= lo) & (r < hi)].sum() for lo, hi in bands])


def band_ratios(student_images: torch.Tensor, teacher_images: torch.Tensor, bands=BANDS) -> torch.Tensor:
    """Per band, the student's share of spectral energy divided by the teacher's, ``[len(bands)]``:
    1 keeps the teacher's balance, below 1 loses that band (blur is a ratio < 1 in the high
    bands), above 1 adds energy there. ``high_frequency_ratio`` is the band ``[0.25, inf)``.
    A band where the teacher has no energy gives ``nan``."""
    teacher = band_shares(teacher_images, bands)
    return band_shares(student_images, bands) / torch.where(teacher > 0, teacher, torch.nan)


def gram_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Style distance between two sets of feature maps ``[N, C, H, W]`` and ``[M, C, H', W']`` (same
    C): ``||mean_n G_a - mean_m G_b||_F / ||mean_m G_b||_F`` with ``G = F F^T / (H W)``. 0 for the same
    texture statistics whatever the layout (invariant to permuting positions); float64."""
    if feats_a.dim() != 4 or feats_b.dim() != 4 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"gram_distance: expected feature maps [N, C, H, W] with the same C, got "
                         f"{list(feats_a.shape)} and {list(feats_b.shape)}")
    ga, gb = gram_matrix(feats_a.double()).mean(0), gram_matrix(feats_b.double()).mean(0)  # (C, C)
    return ((ga - gb).norm() / gb.norm().clamp_min(1e-300)).item()


def sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix ``[D, D]`` (negative eigenvalues from
    rounding are clipped to 0)."""
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor,
                     root1: torch.Tensor | None = None) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2), in float64:

        ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1^1/2 sigma2 sigma1^1/2)^1/2)

    ``root1``: ``sqrt_psd(sigma1)`` (float64) when already computed, e.g. for a fixed reference compared with
    many bootstrap resamples."""
    mu1, mu2, s1, s2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root1 = sqrt_psd(s1) if root1 is None else root1.double()
    cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp_min(0).sqrt().sum()
    value = ((mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross).item()
    return max(value, 0.0)  # rounding can leave about -1e-5 for identical inputs


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of features ``[N, D]`` (float64)."""
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def count_macs(model: nn.Module, *inputs, **kwargs) -> int:
    """Multiply-accumulates per sample of one forward pass (Conv2d, ConvTranspose2d, Linear; masked
    convolutions count their full kernel, as they compute it). Inputs carry a batch dimension."""
    total = [0]

    def conv(m, inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def conv_t(m, inp, out):
        total[0] += inp[0].numel() * (m.out_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        total[0] += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.ConvTranspose2d):
            hooks.append(m.register_forward_hook(conv_t))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
    was_training = model.training
    model.eval()  # counting must not update BatchNorm statistics
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total[0] // inputs[0].shape[0]


def seconds_per_image(sample: Callable[[int], torch.Tensor], n: int = 64, repeats: int = 3) -> float:
    """Median wall time of ``sample(n)`` divided by ``n`` after one warm-up call (CUDA synchronised
    when CUDA is in use)."""
    def sync():
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def run():
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            sample(n)
        sync()
        return time.perf_counter() - t0
    run()
    times = sorted(run() for _ in range(repeats))
    return times[len(times) // 2] / n
