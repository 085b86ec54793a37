import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdlab as kd
from kdlab.evaluation import metrics


@pytest.mark.parametrize("size", [28, 32])
def test_radial_spectrum_of_a_pure_grating_peaks_at_its_frequency(size):
    x = torch.arange(size, dtype=torch.float64)
    for k in range(1, size // 2):
        img = torch.cos(2 * math.pi * (k / size) * x)[None, None, None, :].expand(2, 1, size, size)
        freqs, power = metrics.radial_spectrum(img)
        assert freqs.shape == power.shape == (size // 2 + 1,)
        assert power.argmax().item() == k and freqs[k].item() == pytest.approx(k / size)
    x = torch.arange(32, dtype=torch.float64)
    img = torch.cos(2 * math.pi * (8 / 32) * x)[None, None, None, :].expand(2, 1, 32, 32)  # 0.25 cycles/pixel
    # Parseval: the whole (DC-free) energy lands in the two bins at +-8 cycles: sum |FFT|^2 = N^2 * sum x^2
    assert metrics.high_frequency_share(img, 0.24) == pytest.approx(1.0)
    assert metrics.high_frequency_share(img, 0.26) == pytest.approx(0.0, abs=1e-12)


def test_high_frequency_ratio_of_blurred_images_is_below_one():
    images, _ = kd.data.as_tensors(kd.data.load("mnist5k", "test"))
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert metrics.high_frequency_ratio(blurred, images) < 0.5
    assert metrics.high_frequency_ratio(images, images) == pytest.approx(1.0)
    noisy = images + 0.3 * torch.randn_like(images)
    assert metrics.high_frequency_ratio(noisy, images) > 1.0


def test_frechet_distance_closed_forms():
    torch.manual_seed(0)
    d = 6
    a = torch.randn(d, d, dtype=torch.float64)
    sigma = a @ a.T + torch.eye(d, dtype=torch.float64)
    mu = torch.randn(d, dtype=torch.float64)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    delta = torch.arange(d, dtype=torch.float64)
    assert metrics.frechet_distance(mu, sigma, mu + delta, sigma) == pytest.approx(delta.pow(2).sum().item())
    eye = torch.eye(d, dtype=torch.float64)
    # N(0, a^2 I) vs N(0, b^2 I): d (a - b)^2
    assert metrics.frechet_distance(mu, 4 * eye, mu, 9 * eye) == pytest.approx(d * (2 - 3) ** 2)
    # non-commuting covariances: Tr (S1^1/2 S2 S1^1/2)^1/2 = sum sqrt(eig(S1 S2)) (similar matrices)
    b = torch.randn(d, d, dtype=torch.float64)
    sigma2 = b @ b.T + 0.5 * eye
    cross = torch.linalg.eigvals(sigma @ sigma2).real.clamp_min(0).sqrt().sum()
    expected = (torch.trace(sigma) + torch.trace(sigma2) - 2 * cross).item()
    assert metrics.frechet_distance(mu, sigma, mu, sigma2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_samples_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 4, generator=g, dtype=torch.float64)
    y = torch.randn(4000, 4, generator=g, dtype=torch.float64)
    same = metrics.frechet_distance(*metrics.gaussian_stats(x), *metrics.gaussian_stats(y))
    shifted = [metrics.frechet_distance(*metrics.gaussian_stats(x), *metrics.gaussian_stats(y + s)) for s in (0.5, 1.0)]
    # expected d * s^2; the sampling error of the mean difference has std 2 s sqrt(d * 2 / 4000)
    assert same < 0.02 < shifted[0] < shifted[1]
    assert shifted[0] == pytest.approx(4 * 0.25, abs=3.5 * 0.045) and shifted[1] == pytest.approx(4.0, abs=3.5 * 0.09)


def test_count_macs_against_hand_counts():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 4, 4, 2, 1), nn.Flatten(),
                          nn.Linear(4 * 20 * 20, 5))
    macs = metrics.count_macs(model, torch.randn(2, 3, 10, 10))
    conv = 10 * 10 * 8 * 3 * 9  # outputs x (Cin x k x k)
    conv_t = 10 * 10 * 8 * 4 * 16  # inputs x (Cout x k x k)
    linear = 5 * 1600
    assert macs == conv + conv_t + linear


def test_count_macs_grows_with_generator_width():
    z = torch.randn(1, 64)
    macs = [metrics.count_macs(kd.models.Generator(width=w), z) for w in (4, 8, 16)]
    assert macs[0] < macs[1] < macs[2] and 3.5 < macs[2] / macs[1] < 4.1  # about width^2


def test_seconds_per_image_is_positive_and_scales():
    t = metrics.seconds_per_image(lambda n: time_sleep(0.01), n=2, repeats=3)
    assert 0.004 < t < 0.05


def time_sleep(s):
    import time
    time.sleep(s)


def test_count_macs_leaves_batchnorm_statistics_alone():
    g = kd.models.Generator(width=4)
    before = g.stem[1].running_mean.clone()
    metrics.count_macs(g, torch.randn(2, 64))
    assert torch.equal(before, g.stem[1].running_mean) and g.training


def test_band_energies_parseval_and_a_sinusoid():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 16, 16, generator=g, dtype=torch.float64) + 0.5
    bands = ((0.0, 0.1), (0.1, 0.3), (0.3, 1.0))  # tiles [0, 1): every FFT bin once
    e = metrics.band_energies(x, bands)
    variance = x.var(dim=(-2, -1), unbiased=False).mean()  # mean per-image pixel variance
    assert e.sum().item() == pytest.approx(variance.item(), rel=1e-12)
    n, f0, amp = 32, 0.25, 0.8  # a cosine of amplitude A has variance A^2 / 2, all at f0
    xx = torch.arange(n, dtype=torch.float64)[None, :].expand(n, n)
    wave = (amp * torch.cos(2 * math.pi * f0 * xx))[None, None]
    e = metrics.band_energies(wave, ((0.0, 0.2), (0.2, 0.3), (0.3, 1.0)))
    assert e.tolist() == pytest.approx([0.0, amp ** 2 / 2, 0.0], abs=1e-12)
    flat = torch.zeros(2, 1, 8, 8)
    assert metrics.band_energies(flat).tolist() == [0.0] * len(metrics.BANDS)
