"""The exact laboratories of notebook 03 (kdlab.kl) against closed forms."""
import math

import pytest
import torch

import kdlab as kd


def test_empirical_kl_of_distinct_samples_is_infinite():
    a = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert kd.kl.empirical_kl(a, a.clone()) == 0.0
    assert kd.kl.empirical_kl(a, a + 1e-6) == math.inf
    assert kd.kl.empirical_kl(a[:1], a) == pytest.approx(math.log(2))  # p_a = delta(a0); p_b(a0) = 1/2
    # p_a = (2/3, 1/3) over {a0, a1}, p_b = (1/3, 2/3): KL = 2/3 log 2 + 1/3 log(1/2) = log(2) / 3
    assert kd.kl.empirical_kl(a[[0, 0, 1]], a[[0, 1, 1]]) == pytest.approx(math.log(2) / 3)


def test_forward_kl_fit_of_a_gaussian_is_moment_matching():
    # Discretised Gaussians on a grid are an exponential family with statistics (x, x^2), so the
    # forward-KL optimum q* matches the target's mean and variance on the grid exactly.
    grid = torch.linspace(-8, 8, 321, dtype=torch.float64)
    dens = lambda m, s: torch.exp(-(grid - m) ** 2 / (2 * s * s)) / s
    p = 0.5 * dens(-3.0, 0.6) + 0.5 * dens(3.0, 0.8)
    p = p / p.sum()

    def moments(prob):
        mean = (prob * grid).sum().item()
        return mean, math.sqrt((prob * (grid - mean) ** 2).sum().item())

    mu, sigma = kd.kl.fit_gaussian(p, grid, "forward", steps=4000)
    q = torch.softmax(kd.kl.gaussian_on_grid(grid, torch.tensor(mu), torch.tensor(sigma).log()), 0)
    (pm, ps), (qm, qs) = moments(p), moments(q)
    assert qm == pytest.approx(pm, abs=1e-3) and qs == pytest.approx(ps, rel=1e-3)
    assert ps > 3.0  # covers both modes
    # reverse KL from a broad start settles on one mode (here the right one) with that mode's width
    mu_r, sigma_r = kd.kl.fit_gaussian(p, grid, "reverse")
    assert mu_r == pytest.approx(3.0, abs=0.01) and sigma_r == pytest.approx(0.8, rel=0.01)


def test_all_images_enumerates_every_image_once():
    x = kd.kl.all_images(3, 2)
    assert x.shape == (81, 1, 2, 2) and x.dtype == torch.long
    assert len({tuple(r.flatten().tolist()) for r in x}) == 81
    assert x[0].sum() == 0 and x[-1].flatten().tolist() == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="at most 100,000"):
        kd.kl.all_images(16, 3)


def test_pixel_distribution_plot_and_temperature_widget(monkeypatch):
    monkeypatch.setenv("KDLAB_WIDGETS", "1")
    t, s = torch.randn(16), torch.randn(16)
    fig = kd.viz.plot_pixel_distributions(t, {"student": s}, temperature=2.0)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert len(heights) == 32 and sum(heights) == pytest.approx(2.0)  # two distributions over 16 levels
    assert abs(sum(heights[:16]) - 1) < 1e-9
    with pytest.raises(ValueError, match="t_min"):
        kd.widgets.temperature_explorer(t, {"student": s}, t_min=2.0, t_max=1.0)
    pytest.importorskip("ipywidgets")
    w = kd.widgets.temperature_explorer(t, {"student": s})
    assert w.children[0].value == 1.0
