"""Interactive explorers for Jupyter (ipywidgets). Exploration only: every notebook follows a
widget with a static figure made by the same plotting function, so headless runs show it too.
Without ipywidgets installed (plain Python, a bare GPU machine), or with ``KDLAB_WIDGETS=0`` (headless
runs), the explorers print a note and return ``None``; the static figure that follows each one
carries the notebook."""
from __future__ import annotations

import importlib
import math
import os

import matplotlib.pyplot as plt
import torch

from . import viz


def enabled() -> bool:
    """Whether explorers are built: not when ``KDLAB_WIDGETS`` is ``0`` / ``off`` / ``false``, which
    headless runs set (``make tutorial``, ``kdlab run`` / ``sweep``, the tests): nobody can use a
    widget there, and a cell that displays an interactive widget sometimes never completes under
    papermill / nbclient (jupyter/nbclient#312, papermill#723)."""
    return os.environ.get("KDLAB_WIDGETS", "1").strip().lower() not in ("0", "off", "false", "no")


def _ipywidgets(caller: str):
    """The ipywidgets module, or ``None`` after a one-line note when widgets are off or missing."""
    if not enabled():
        print(f"{caller}: interactive explorers are off (KDLAB_WIDGETS=0, a headless run); the static "
              "figure below shows the same plot.")
        return None
    try:
        return importlib.import_module("ipywidgets")
    except ImportError:
        print(f"{caller}: ipywidgets is not installed, so there is no interactive explorer here "
              "(pip install ipywidgets); the static figure below shows the same plot.")
        return None


def temperatures(t_min: float = 0.25, t_max: float = 16.0) -> list[float]:
    """The temperatures the explorer's slider offers: ``2 ** (k / 2)`` in ``[t_min, t_max]``, each
    rounded to 2 significant digits (0.25, 0.35, 0.5, 0.71, 1, 1.4, 2, 2.8, 4, 5.7, 8, 11, 16). The
    figure is drawn at the rounded value itself, so the slider's readout and the figure's title
    (both ``f"{T:g}"``) show the same number."""
    if not 0 < t_min < t_max:
        raise ValueError(f"expected 0 < t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}")
    lo, hi = math.ceil(2 * math.log2(t_min) - 1e-9), math.floor(2 * math.log2(t_max) + 1e-9)
    return sorted({float(f"{2 ** (k / 2):.2g}") for k in range(lo, hi + 1)})


def temperature_explorer(teacher_logits: torch.Tensor, student_logits: dict[str, torch.Tensor],
                         t_min: float = 0.25, t_max: float = 16.0):
    """A log-spaced temperature slider (:func:`temperatures`) redrawing
    :func:`kdlab.viz.plot_pixel_distributions` for one pixel's teacher logits ``[K]`` and student
    logits ``{name: [K]}``. Returns the widget (``None`` without ipywidgets)."""
    values = temperatures(t_min, t_max)
    widgets = _ipywidgets("temperature_explorer")
    if widgets is None:
        return None
    slider = widgets.SelectionSlider(options=[(f"{t:g}", t) for t in values], value=min(values, key=lambda t: abs(t - 1)),
                                     description="T")

    def draw(temperature: float) -> None:
        fig = viz.plot_pixel_distributions(teacher_logits, student_logits, temperature)
        plt.show()
        plt.close(fig)

    return widgets.interactive(draw, temperature=slider)


def student_explorer(teacher: torch.nn.Module, students: dict[str, torch.nn.Module], n: int = 8,
                     bands: dict[str, tuple[float, float]] | None = None):
    """A student dropdown and a noise-seed slider redrawing :func:`kdlab.viz.teacher_student_figure`
    (teacher and student images for the same noise, and their spectra). Returns the widget (``None``
    without ipywidgets)."""
    if not students:
        raise ValueError("student_explorer needs at least one student, got an empty dict")
    widgets = _ipywidgets("student_explorer")
    if widgets is None:
        return None
    names = list(students)

    def draw(student: str, seed: int) -> None:
        fig = viz.teacher_student_figure(teacher, students[student], seed, n=n, name=student, bands=bands)
        plt.show()
        plt.close(fig)

    return widgets.interactive(draw, student=widgets.Dropdown(options=names, value=names[-1], description="student"),
                               seed=widgets.IntSlider(value=0, min=0, max=99, description="noise seed"))
