"""How sure a number is: bootstrap intervals over samples, t intervals over training seeds, and the
words a comparison may use.

Two sources of uncertainty, measured separately:

- **samples**: a metric over 500 generated images moves when the 500 noise vectors change (FID by
  about 10). :func:`bootstrap` resamples the images (their features) with replacement and
  recomputes the metric (``scipy.stats.bootstrap``); the interval is ``estimate ± z * SE`` with the
  bootstrap standard error SE (the "standard" bootstrap interval, Efron and Tibshirani 1993, ch. 13),
  centred on the estimate because a resampled set has duplicates and so a higher FID than a fresh
  set of the same size. Two generators scored on the *same* noise are compared with the paired
  interval of their difference (:func:`fid_difference`): one resample of the noise indices is used
  for both, so what they share cancels;
- **training seeds**: a small student's FID moves by about 30 between seeds. :func:`seed_interval`
  is the mean over seeds ``± t_{n-1} * s / sqrt(n)``.

A difference is claimed only when :func:`verdict` says the intervals allow it.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from .metrics import frechet_distance, gaussian_stats, sqrt_psd

LEVEL = 0.95
N_RESAMPLES = 200


class Interval(NamedTuple):
    """An estimate with its two-sided interval ``[lo, hi]`` at ``level``."""
    estimate: float
    lo: float
    hi: float
    level: float = LEVEL

    def __str__(self) -> str:
        return f"{_fmt(self.estimate)} [{_fmt(self.lo)}, {_fmt(self.hi)}]"

    def __format__(self, spec: str) -> str:
        """``f"{interval:.4f}"`` formats all three numbers with ``.4f``; an empty spec is ``str``."""
        if not spec:
            return str(self)
        return f"{self.estimate:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}]"

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside ``[lo, hi]``."""
        return value < self.lo or value > self.hi


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} is not valid; expected a probability in (0, 1), e.g. 0.95")
    from scipy import stats  # imported when first needed: it takes half a second, `import kdlab` should not

    return float(stats.norm.ppf(0.5 + level / 2))


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, n_resamples: int = N_RESAMPLES, seed: int = 0,
              level: float = LEVEL) -> Interval:
    """Bootstrap interval of ``statistic(indices)`` over ``n`` samples: ``statistic`` receives an
    index array ``[n]`` (``np.arange(n)`` for the estimate, resampled with replacement for each of
    ``n_resamples`` replicates) and returns a float. ``estimate ± z * SE`` (see the module docstring)."""
    if n < 2:
        raise ValueError(f"n={n!r}: a bootstrap needs at least 2 samples")
    from scipy import stats

    estimate = float(statistic(np.arange(n)))
    result = stats.bootstrap((np.arange(n),), lambda idx: float(statistic(idx)), n_resamples=n_resamples,
                             vectorized=False, method="percentile", confidence_level=level,
                             random_state=np.random.default_rng(seed))
    half = _z(level) * float(result.standard_error)
    return Interval(estimate, estimate - half, estimate + half, level)


def _fid_from(mu_ref: torch.Tensor, sigma_ref: torch.Tensor) -> Callable[[torch.Tensor], float]:
    """FID of features ``[n, D]`` against a fixed reference, with the reference's square root
    computed once: Tr((S1^1/2 S2 S1^1/2)^1/2) is symmetric in S1 and S2, so the reference goes first."""
    mu_ref, sigma_ref = mu_ref.double(), sigma_ref.double()
    root_ref = sqrt_psd(sigma_ref)

    def fid(features: torch.Tensor) -> float:
        return frechet_distance(mu_ref, sigma_ref, *gaussian_stats(features), root1=root_ref)

    return fid


def fid_interval(features: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, n_resamples: int = N_RESAMPLES,
                 seed: int = 0, level: float = LEVEL) -> Interval:
    """FID of generated features ``[n, D]`` against reference statistics ``mu`` ``[D]``, ``sigma``
    ``[D, D]``, with its bootstrap interval over the ``n`` samples."""
    fid = _fid_from(mu, sigma)
    f = features.double()
    return bootstrap(lambda idx: fid(f[torch.from_numpy(idx)]), len(f), n_resamples, seed, level)


def fid_difference(features_a: torch.Tensor, features_b: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                   n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> Interval:
    """FID(a) - FID(b) with its *paired* bootstrap interval: ``features_a[i]`` and ``features_b[i]``
    ``[n, D]`` come from the same input ``i`` (same noise vector), and each replicate resamples the
    indices once for both. Identical sets give exactly ``0 [0, 0]``."""
    if features_a.shape != features_b.shape:
        raise ValueError(f"paired features must have the same shape, got {list(features_a.shape)} and "
                         f"{list(features_b.shape)}")
    fid = _fid_from(mu, sigma)
    a, b = features_a.double(), features_b.double()

    def diff(idx):
        i = torch.from_numpy(idx)
        return fid(a[i]) - fid(b[i])

    return bootstrap(diff, len(a), n_resamples, seed, level)


def mean_interval(values: torch.Tensor, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> Interval:
    """Mean of per-sample values ``[n]`` (an indicator per image, a per-image energy) with its
    bootstrap interval."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten().numpy()
    return bootstrap(lambda idx: v[idx].mean(), len(v), n_resamples, seed, level)


def ratio_interval(numerator: torch.Tensor, denominator: torch.Tensor, n_resamples: int = N_RESAMPLES, seed: int = 0,
                   level: float = LEVEL) -> Interval:
    """``sum(numerator) / sum(denominator)`` of paired per-sample values ``[n]`` (a student's and the
    teacher's energy for the same input), with the paired bootstrap interval."""
    a = torch.as_tensor(numerator, dtype=torch.float64).flatten().numpy()
    b = torch.as_tensor(denominator, dtype=torch.float64).flatten().numpy()
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same length, got {a.shape[0]} and {b.shape[0]}")
    return bootstrap(lambda idx: a[idx].sum() / b[idx].sum(), len(a), n_resamples, seed, level)


def seed_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean over training seeds with the t interval ``mean ± t_{n-1} * s / sqrt(n)`` (needs n >= 2)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 2 or not np.isfinite(v).all():
        raise ValueError(f"seed_interval needs at least 2 finite values (one per seed), got {values!r}")
    _z(level)
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * v.std(ddof=1) / math.sqrt(len(v))
    return Interval(float(v.mean()), float(v.mean()) - half, float(v.mean()) + half, level)


def verdict(a: Interval, b: Interval, name_a: str, name_b: str, lower_is_better: bool = True,
            difference: Interval | None = None) -> str:
    """The claim two intervals allow. With ``difference`` (the paired interval of a - b) the claim
    follows whether it excludes 0; otherwise ``a`` and ``b`` must not overlap."""
    if difference is not None:
        a_lower = difference.hi < 0
        decided = difference.excludes(0)
        how = f"the {difference.level:.0%} interval of the difference, {difference}, excludes 0"
    else:
        a_lower = a.hi < b.lo
        decided = a_lower or b.hi < a.lo
        how = "their intervals do not overlap"
    if not decided:
        return (f"{name_a} {a} vs {name_b} {b}: the intervals allow no difference; this run cannot tell "
                "them apart")
    better = name_a if a_lower == lower_is_better else name_b
    return f"{better} better ({name_a} {a} vs {name_b} {b}; {how})"
