"""Intervals checked against closed forms and known coverage, not against their own output."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from kdlab.evaluation import intervals
from kdlab.evaluation.metrics import frechet_distance, gaussian_stats


def test_standard_error_of_a_mean_matches_the_closed_form():
    """For the mean of n values the bootstrap standard error tends to s * sqrt((n - 1) / n) / sqrt(n)."""
    v = torch.from_numpy(np.random.default_rng(0).normal(3.0, 2.0, 400))
    iv = intervals.mean_interval(v, n_resamples=4000)
    se = v.std().item() * math.sqrt(399 / 400) / math.sqrt(400)
    assert iv.estimate == pytest.approx(v.mean().item())
    assert (iv.hi - iv.lo) / 2 == pytest.approx(1.959964 * se, rel=0.06)


def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    trials = 200
    hits = sum(not intervals.mean_interval(torch.from_numpy(rng.exponential(1.0, 200)), n_resamples=100,
                                           seed=t).excludes(1.0) for t in range(trials))
    # 95% nominal; the binomial sd over 200 trials is 1.5 points
    assert 0.89 <= hits / trials <= 0.99


def test_fid_interval_covers_the_known_frechet_distance_of_a_gaussian():
    """Features ~ N(mu, I) in 2 dimensions against the reference N(0, I): the Fréchet distance is
    |mu|^2 = 1 exactly; the interval over 500 samples must cover it about 95% of the time."""
    mu_ref, sigma_ref = torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    trials = 100  # deterministic seeds: the count is the same on every run
    hits = sum(not intervals.fid_interval(torch.randn(500, 2, generator=g, dtype=torch.float64) + torch.tensor([0.6, 0.8]),
                                          mu_ref, sigma_ref, n_resamples=100, seed=t).excludes(1.0)
               for t in range(trials))
    assert 0.87 <= hits / trials <= 0.995


def test_fid_interval_estimate_is_the_frechet_distance():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(300, 4, generator=g, dtype=torch.float64) * 1.5 + 0.3
    ref = torch.randn(1000, 4, generator=g, dtype=torch.float64)
    mu, sigma = gaussian_stats(ref)
    iv = intervals.fid_interval(f, mu, sigma, n_resamples=50)
    assert iv.estimate == pytest.approx(frechet_distance(*gaussian_stats(f), mu, sigma), rel=1e-9)
    assert iv.lo < iv.estimate < iv.hi


def test_paired_difference_of_identical_sets_is_exactly_zero_and_of_same_distribution_covers_zero():
    g = torch.Generator().manual_seed(4)
    mu, sigma = torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    a = torch.randn(400, 3, generator=g, dtype=torch.float64)
    same = intervals.fid_difference(a, a.clone(), mu, sigma, n_resamples=100)
    assert (same.estimate, same.lo, same.hi) == (0.0, 0.0, 0.0) and not same.excludes(0)
    covered = sum(not intervals.fid_difference(torch.randn(400, 3, generator=g, dtype=torch.float64) + 0.5,
                                               torch.randn(400, 3, generator=g, dtype=torch.float64) + 0.5,
                                               mu, sigma, n_resamples=100, seed=t).excludes(0) for t in range(60))
    assert covered >= 52  # about 57 of 60 expected at 95%
    shifted = intervals.fid_difference(a + 1.0, a, mu, sigma, n_resamples=100)  # FID 3 + |mean|^2 higher
    assert shifted.lo > 0


def test_seed_interval_is_the_t_interval():
    v = [50.0, 62.0, 47.0]
    iv = intervals.seed_interval(v)
    half = stats.t.ppf(0.975, 2) * np.std(v, ddof=1) / math.sqrt(3)
    assert iv.estimate == pytest.approx(53.0) and iv.hi - iv.estimate == pytest.approx(half)
    with pytest.raises(ValueError, match="at least 2"):
        intervals.seed_interval([1.0])
    with pytest.raises(ValueError, match="level"):
        intervals.seed_interval(v, level=95)


def test_verdicts_claim_only_what_the_intervals_allow():
    a, b = intervals.Interval(40.0, 35.0, 45.0), intervals.Interval(60.0, 50.0, 70.0)
    assert intervals.verdict(a, b, "A", "B").startswith("A better")
    assert intervals.verdict(a, b, "A", "B", lower_is_better=False).startswith("B better")
    overlap = intervals.Interval(48.0, 40.0, 56.0)
    assert "cannot tell" in intervals.verdict(a, overlap, "A", "C")
    # a paired difference that excludes 0 decides even when the marginal intervals overlap
    assert intervals.verdict(a, overlap, "A", "C", difference=intervals.Interval(-8.0, -12.0, -4.0)).startswith("A better")
    assert "cannot tell" in intervals.verdict(a, overlap, "A", "C", difference=intervals.Interval(-8.0, -12.0, 1.0))
    assert f"{intervals.Interval(0.49123, 0.48, 0.5):.3f}" == "0.491 [0.480, 0.500]"


def test_ratio_interval_of_paired_sums():
    g = torch.Generator().manual_seed(5)
    b = torch.rand(300, generator=g, dtype=torch.float64) + 0.5
    exact = intervals.ratio_interval(2 * b, b, n_resamples=50)  # every pair has ratio 2: no spread at all
    assert exact.estimate == pytest.approx(2.0) and exact.hi - exact.lo < 1e-9
    noisy = intervals.ratio_interval(2 * b * (1 + 0.2 * torch.randn(300, generator=g, dtype=torch.float64)), b)
    assert noisy.lo < 2.0 < noisy.hi
    with pytest.raises(ValueError, match="same length"):
        intervals.ratio_interval(b, b[:5])
