"""Small exact laboratories for notebook 03, where every KL identity is checked numerically.

- :func:`empirical_kl`: the KL between two empirical ("sum of deltas") distributions of samples,
  the quantity the source article optimises; it is ``inf`` unless every sample of the first set
  also occurs in the second, so it carries no information about how close two generators are.
- :func:`gaussian_on_grid` and :func:`fit_gaussian`: a one-dimensional categorical model on a grid
  (a discretised Gaussian) fitted to a target distribution by forward or reverse KL, to show mode
  covering versus mode seeking.
- :func:`all_images`: every image of a tiny size and level count, so image-level KLs of tiny
  PixelCNNs can be computed exactly by enumeration and compared with the chain rule.
"""
from __future__ import annotations

import itertools
import math

import torch

from . import losses
from .utils import check_int


def empirical_kl(a: torch.Tensor, b: torch.Tensor) -> float:
    """KL(p_a || p_b) in nats between the empirical distributions ``p_a = (1/n) sum_i delta(x - a_i)``
    and ``p_b`` of two sample sets ``[n, ...]`` and ``[m, ...]`` (samples compared exactly).

    ``sum_x p_a(x) log(p_a(x) / p_b(x))`` is ``inf`` as soon as one sample of ``a`` is absent from
    ``b``, and 0 only when both sets hold the same samples in the same proportions."""
    def counts(s: torch.Tensor) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for row in s.detach().cpu().contiguous():
            key = row.numpy().tobytes()
            out[key] = out.get(key, 0) + 1
        return out

    ca, cb = counts(a), counts(b)
    kl = 0.0
    for key, n in ca.items():
        if key not in cb:
            return float("inf")
        pa, pb = n / len(a), cb[key] / len(b)
        kl += pa * math.log(pa / pb)
    return kl


def gaussian_on_grid(grid: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Logits ``[K]`` of a Gaussian discretised on ``grid`` ``[K]``: ``-(x - mu)^2 / (2 sigma^2)``
    (softmax of them is the categorical distribution; the normaliser cancels)."""
    return -(grid - mu) ** 2 / (2 * torch.exp(2 * log_sigma))


def fit_gaussian(target_probs: torch.Tensor, grid: torch.Tensor, direction: str, mu0: float = 0.5,
                 sigma0: float = 3.0, steps: int = 1000, lr: float = 0.1) -> tuple[float, float]:
    """Fit a discretised Gaussian ``q`` to the categorical ``target_probs`` ``[K]`` on ``grid`` ``[K]``
    by minimising ``KL(p || q)`` (``"forward"``) or ``KL(q || p)`` (``"reverse"``) with Adam from
    ``(mu0, sigma0)``, in float64 through :func:`kdlab.losses.kl_distillation`. Returns ``(mu, sigma)``."""
    check_int("steps", steps)
    mu = torch.tensor(float(mu0), dtype=torch.float64, requires_grad=True)
    log_sigma = torch.tensor(float(sigma0), dtype=torch.float64).log().requires_grad_(True)
    target_logits = target_probs.double().clamp_min(1e-300).log()[None]  # (1, K)
    opt = torch.optim.Adam([mu, log_sigma], lr=lr)
    for _ in range(steps):
        q_logits = gaussian_on_grid(grid.double(), mu, log_sigma)[None]  # (1, K)
        loss = losses.kl_distillation(q_logits, target_logits, 1.0, direction)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mu.item(), log_sigma.exp().item()


def all_images(levels: int, size: int) -> torch.Tensor:
    """Every image ``[levels ** (size * size), 1, size, size]`` (int64 levels), in lexicographic
    raster order; at most 100,000 images."""
    check_int("levels", levels, 2)
    check_int("size", size)
    count = levels ** (size * size)
    if count > 100_000:
        raise ValueError(f"levels={levels}, size={size} gives {count:,} images; at most 100,000 can be enumerated")
    rows = list(itertools.product(range(levels), repeat=size * size))
    return torch.tensor(rows, dtype=torch.long).view(count, 1, size, size)
