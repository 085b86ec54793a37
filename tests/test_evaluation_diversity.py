"""Precision/recall and mode coverage (kdlab.evaluation.diversity) against brute-force references and
known cases; spectral bands and Gram distance (kdlab.evaluation.metrics)."""
import math

import pytest
import torch

from kdlab.evaluation import diversity, metrics


def _brute_precision_recall(real, fake, k):
    def radius(points, i):
        d = sorted(math.dist(points[i], points[j]) for j in range(len(points)) if j != i)
        return d[k - 1]

    def share(query, ref):
        radii = [radius(ref, j) for j in range(len(ref))]
        return sum(any(math.dist(q, ref[j]) <= radii[j] for j in range(len(ref))) for q in query) / len(query)

    real, fake = real.tolist(), fake.tolist()
    return share(fake, real), share(real, fake)


def test_precision_recall_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 3, generator=g, dtype=torch.float64)
    fake = 0.7 * torch.randn(30, 3, generator=g, dtype=torch.float64) + 0.8
    ours = diversity.precision_recall(real, fake, k=3, chunk=7)  # chunking must not matter
    ref = _brute_precision_recall(real, fake, 3)
    assert ours == pytest.approx(ref, abs=1e-12)


def test_precision_recall_of_identical_and_disjoint_sets():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # seeded: same on every run
    assert diversity.precision_recall(x, x.clone()) == (1.0, 1.0)
    assert diversity.precision_recall(x, x + 100.0) == (0.0, 0.0)
    # a generator that covers only part of the data: high precision, low recall
    half = x[x[:, 0] > 0]
    p, r = diversity.precision_recall(x, half)
    assert p == 1.0 and 0.3 < r < 0.8
    with pytest.raises(ValueError, match="same D"):
        diversity.precision_recall(x, x[:, :4])


def test_class_histogram_and_mode_coverage():
    class Fixed(torch.nn.Module):  # "classifies" by the mean brightness of the image
        config = {"n_classes": 3}

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            m = x.mean((1, 2, 3))
            return torch.stack([-(m + 1).abs(), -m.abs(), -(m - 1).abs()], 1)

    images = torch.cat([torch.full((2, 1, 28, 28), -1.0), torch.full((6, 1, 28, 28), 1.0)])
    hist = diversity.class_histogram(Fixed(), images)
    assert hist.tolist() == [0.25, 0.0, 0.75]
    cov = diversity.mode_coverage(hist, torch.tensor([1 / 3, 1 / 3, 1 / 3], dtype=torch.float64))
    assert cov == {"tv": pytest.approx(0.5 * (1 / 12 + 1 / 3 + 5 / 12)), "covered": 2, "reference_classes": 3}


def test_band_shares_of_a_sinusoid_and_a_low_pass_copy():
    n = 32
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    f0 = 0.3  # cycles/pixel, inside the band [0.25, 0.375)
    wave = torch.cos(2 * math.pi * f0 * xx).double()[None, None]
    shares = metrics.band_shares(wave)
    assert shares.sum().item() == pytest.approx(1.0) and shares.argmax().item() == 2
    freqs, power = metrics.radial_spectrum(wave)
    assert abs(freqs[power.argmax()].item() - f0) <= 0.5 / 16  # peak in the ring of f0
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 1, n, n, generator=g, dtype=torch.float64)
    k = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    kernel = (k[:, None] * k[None, :] / 16)[None, None]
    blurred = torch.nn.functional.conv2d(noise, kernel, padding=1)
    ratios = metrics.band_ratios(blurred, noise)
    assert ratios[0] > 1 and ratios[2] < 1 and ratios[3] < ratios[2]  # low band gains share, high bands lose
    hf = metrics.high_frequency_ratio(blurred, noise)
    bands = ((0.0, 0.25), (0.25, math.inf))
    assert metrics.band_ratios(blurred, noise, bands)[1].item() == pytest.approx(hf)


def test_gram_distance_identity_permutation_and_change():
    g = torch.Generator().manual_seed(0)
    f = torch.rand(5, 4, 6, 6, generator=g, dtype=torch.float64)
    assert metrics.gram_distance(f, f.clone()) == 0.0
    perm = torch.randperm(36, generator=g)
    shuffled = f.flatten(2)[:, :, perm].reshape(f.shape)
    assert metrics.gram_distance(shuffled, f) == pytest.approx(0.0, abs=1e-14)
    assert metrics.gram_distance(2 * f, f) == pytest.approx(3.0)  # G scales by 4: |4G - G| / |G|
    with pytest.raises(ValueError, match="same C"):
        metrics.gram_distance(f, f[:, :3])
