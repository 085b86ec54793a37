"""Interactive explorers (kdlab.widgets): built with ipywidgets, a note and None without them or
with KDLAB_WIDGETS=0 (the headless default of the tests, see conftest.py)."""
import sys

import matplotlib.pyplot as plt
import pytest
import torch

import kdlab as kd


def test_student_explorer(monkeypatch):
    monkeypatch.setenv("KDLAB_WIDGETS", "1")
    teacher, student = kd.models.Generator(width=2).eval(), kd.models.Generator(width=1).eval()
    with pytest.raises(ValueError, match="at least one student"):
        kd.widgets.student_explorer(teacher, {})
    pytest.importorskip("ipywidgets")
    widget = kd.widgets.student_explorer(teacher, {"tiny": student})
    assert [c.description for c in widget.children[:2]] == ["student", "noise seed"]


def test_explorers_without_ipywidgets_print_a_note_and_return_none(monkeypatch, capsys):
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


def test_temperature_slider_readout_equals_the_figure_title(monkeypatch):
    """The slider offers rounded log-spaced temperatures and the figure is drawn at exactly the value
    the readout shows (not at 13.4543 under a readout of 13.5)."""
    assert kd.widgets.temperatures() == [0.25, 0.35, 0.5, 0.71, 1.0, 1.4, 2.0, 2.8, 4.0, 5.7, 8.0, 11.0, 16.0]
    with pytest.raises(ValueError, match="0 < t_min < t_max"):
        kd.widgets.temperatures(2.0, 1.0)
    monkeypatch.setenv("KDLAB_WIDGETS", "1")
    pytest.importorskip("ipywidgets")
    teacher, students = torch.randn(4), {"s": torch.randn(4)}
    titles = []  # what the explorer draws: the title of the figure it shows after each move
    monkeypatch.setattr(plt, "show", lambda *a, **k: titles.append(plt.gcf().axes[0].get_title()))
    slider = kd.widgets.temperature_explorer(teacher, students).children[0]
    assert slider.description == "T" and slider.value == 1.0
    for label, value in slider.options:
        slider.value = value  # moving the slider redraws through the widget's own callback
        assert titles[-1] == f"T = {label}"
    assert len(titles) >= len(slider.options)
