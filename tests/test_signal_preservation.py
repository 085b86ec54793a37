"""Notebook 05's building blocks: recipes, the shared evaluation protocol, the shipped texture
teacher, and the spectrum figures and explorer."""
import numpy as np
import pytest
import torch

import kdlab as kd


def test_parse_recipe_and_errors():
    assert kd.train.parse_recipe("mse") == ("mse", None)
    assert kd.train.parse_recipe("joint+gram") == ("joint", "gram")
    for bad, word in (("mse+", "expected"), ("adv", "mse"), ("mse+style", "hint"), ("mse+gram+hint", "expected"), (3, "expected")):
        with pytest.raises(ValueError, match=word):
            kd.train.parse_recipe(bad)


def test_distill_recipe_is_distill_gan_with_the_parsed_losses():
    teacher = kd.models.Generator(width=2).eval()
    common = dict(steps=3, batch_size=4, seed=1, device="cpu", progress=False)
    a, b = kd.models.Generator(width=1), kd.models.Generator(width=1)
    b.load_state_dict(a.state_dict())
    ha = kd.train.distill_recipe(a, teacher, "l1+attention", layers=["blocks.up2"], feature_weight=2.0, **common)
    hb = kd.train.distill_gan(b, teacher, loss="l1", feature_loss="attention", layers=["blocks.up2"], feature_weight=2.0, **common)
    assert ha == hb and "feature" in ha
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.fixture(scope="module")
def evaluator():
    teacher = kd.checkpoints.load(kd.checkpoints.shipped("gan_teacher"), device="cpu")
    return kd.evaluate.StudentEvaluator(teacher, n=60, seed=3)


def test_student_evaluator_scores_the_teacher_as_itself(evaluator):
    r = evaluator(evaluator.teacher_images)
    assert r["mse_to_teacher"] == 0 and r["gram_distance"] == 0 and r["class_tv_to_teacher"] == 0
    assert r["hf_ratio"] == pytest.approx(1.0) and r["band_ratios"] == pytest.approx([1.0] * 4)
    assert r["fid"] == pytest.approx(evaluator.fid(evaluator.teacher_images))
    assert 0 < r["precision"] <= 1 and 0 < r["recall"] <= 1
    assert evaluator.z.shape == (60, 64)


def test_student_evaluator_sees_blur_and_rejects_other_shapes(evaluator):
    blurred = torch.nn.functional.avg_pool2d(evaluator.teacher_images, 3, 1, 1)  # low-pass: less fine detail
    r = evaluator(blurred)
    assert r["mse_to_teacher"] > 0 and r["hf_ratio"] < 0.5 and r["band_ratios"][-1] < r["band_ratios"][0]
    assert r["gram_distance"] > 0 and r["fid"] > evaluator(evaluator.teacher_images)["fid"]
    with pytest.raises(ValueError, match="evaluator.z"):
        evaluator(evaluator.teacher_images[:10])
    with pytest.raises(ValueError, match="at least 10"):
        kd.evaluate.StudentEvaluator(kd.models.Generator(width=1), n=5)


def _numpy_band_shares(images: np.ndarray, bands) -> np.ndarray:
    """Independent float64 reference: share of the non-DC FFT energy in each radial band."""
    x = images - images.mean(axis=(-2, -1), keepdims=True)
    power = (np.abs(np.fft.fft2(x)) ** 2).sum(axis=tuple(range(x.ndim - 2)))
    f = np.fft.fftfreq(x.shape[-1])
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return np.array([power[(r >= lo) & (r < hi)].sum() for lo, hi in bands]) / power.sum()


def test_shipped_texture_teacher_keeps_the_data_band_balance():
    path = kd.checkpoints.shipped("texture_teacher")
    meta = kd.checkpoints.metadata(path)
    assert meta["dataset"] == "textures" and meta["band_names"] == list(kd.textures.BANDS)
    teacher = kd.checkpoints.load(path).eval()
    with torch.no_grad():
        samples = teacher(teacher.sample_noise(400, torch.Generator().manual_seed(5))).numpy()
    real = kd.data.as_tensors(kd.data.load("textures", "test"))[0].numpy()
    bands = list(kd.textures.BANDS.values())
    got, want = _numpy_band_shares(samples, bands), _numpy_band_shares(real, bands)
    assert np.abs(got - want).max() < 0.08, (got, want)  # each band within 8 points of the data's share
    assert got.sum() > 0.9  # almost all energy inside the three texture bands, as in the data


def test_spectrum_figures_and_explorer(monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("KDLAB_WIDGETS", "1")
    teacher, student = kd.models.Generator(width=2).eval(), kd.models.Generator(width=1).eval()
    fig = kd.viz.teacher_student_figure(teacher, student, seed=0, n=4, bands=dict(kd.textures.BANDS))
    assert len(fig.axes) == 3 and len(fig.axes[2].lines) == 2 and fig.axes[2].get_yscale() == "log"
    plt.close(fig)
    with pytest.raises(ValueError, match="at least one student"):
        kd.widgets.student_explorer(teacher, {})
    pytest.importorskip("ipywidgets")
    widget = kd.widgets.student_explorer(teacher, {"tiny": student})
    assert [c.description for c in widget.children[:2]] == ["student", "noise seed"]


def test_explorers_without_ipywidgets_print_a_note_and_return_none(monkeypatch, capsys):
    import sys

    monkeypatch.setenv("KDLAB_WIDGETS", "1")
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # makes `import ipywidgets` raise ImportError
    teacher = kd.models.Generator(width=1).eval()
    assert kd.widgets.student_explorer(teacher, {"tiny": teacher}) is None
    assert kd.widgets.temperature_explorer(torch.randn(4), {"s": torch.randn(4)}) is None
    out = capsys.readouterr().out
    assert out.count("ipywidgets is not installed") == 2 and "static figure below" in out
    monkeypatch.delitem(sys.modules, "ipywidgets")
    for off in ("0", "off"):  # headless runs switch them off even with ipywidgets installed
        monkeypatch.setenv("KDLAB_WIDGETS", off)
        assert kd.widgets.student_explorer(teacher, {"tiny": teacher}) is None
    assert capsys.readouterr().out.count("explorers are off (KDLAB_WIDGETS=0") == 2
