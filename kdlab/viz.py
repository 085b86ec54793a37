"""Plots used by the notebooks: image grids and loss curves (fixed figure sizes; pass ``path`` to
also save a PNG).

Each function returns its figure and closes nothing: Jupyter's inline backend shows every figure
still open at the end of the cell, once. A figure that is also the cell's value is shown a second
time, so a notebook line that ends a cell with one of these calls ends in ``;`` (or assigns the
figure: ``fig = kd.viz.teacher_student_figure(...)``)."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .evaluation.metrics import radial_spectrum
from .losses import kl_distillation


def grid_image(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """Images ``[N, C, H, W]`` in [-1, 1] -> one ``[H', W', C]`` array in [0, 1] (2-pixel white gaps)."""
    from torchvision.utils import make_grid  # imported when first needed: torchvision takes a second to import

    g = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=2, normalize=True,
                  value_range=(-1, 1), pad_value=1.0)
    return g.permute(1, 2, 0).numpy()


def show_grids(grids: Sequence[torch.Tensor], titles: Sequence[str], nrow: int = 8, path=None,
               height: float = 3.2):
    """Side-by-side image grids (e.g. real data | teacher | student), one panel each."""
    fig, axes = plt.subplots(1, len(grids), figsize=(height * len(grids), height), squeeze=False)
    for ax, images, title in zip(axes[0], grids, titles):
        ax.imshow(grid_image(images, nrow), cmap="gray" if images.shape[1] == 1 else None)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (``window`` values; the first values average what exists)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_history(history: dict, keys: Sequence[str], title: str = "", ylabel: str = "", window: int = 25,
                 path=None, ax=None):
    """Loss curves ``history[key]`` against ``history["step"]`` (raw, faint) with a moving average."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    steps = history["step"]
    for key in keys:
        line, = ax.plot(steps, smooth(history[key], window), label=key)
        ax.plot(steps, history[key], color=line.get_color(), alpha=0.2, linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_pixel_distributions(teacher_logits: torch.Tensor, student_logits: dict[str, torch.Tensor],
                             temperature: float = 1.0, ax=None, title: str = ""):
    """Bars of ``softmax(logits / T)`` over the K intensity levels at one pixel: the teacher's
    ``[K]`` and each student's ``{name: [K]}``, with ``T^2 KL(teacher || student)`` in the legend."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.2))
    else:
        fig = ax.figure
    k = teacher_logits.shape[-1]
    width = 0.8 / (1 + len(student_logits))
    levels = np.arange(k)
    t = teacher_logits.detach().double().cpu()
    ax.bar(levels, torch.softmax(t / temperature, 0).numpy(), width, label="teacher", color="black")
    for i, (name, s) in enumerate(student_logits.items(), start=1):
        s = s.detach().double().cpu()
        kl = kl_distillation(s[None], t[None], temperature).item()
        ax.bar(levels + i * width, torch.softmax(s / temperature, 0).numpy(), width,
               label=f"{name}  (T²·KL {kl:.3f})")
    ax.set_xlabel("intensity level")
    ax.set_ylabel(f"softmax(logits / {temperature:g})")
    ax.set_title(title or f"T = {temperature:g}")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_spectra(images: dict[str, torch.Tensor], bands: dict[str, tuple[float, float]] | None = None, ax=None,
                 title: str = "radially averaged power spectrum"):
    """Radial power spectra (:func:`kdlab.evaluation.metrics.radial_spectrum`, log scale) of image sets
    ``{name: [N, C, H, W]}`` against frequency in cycles per pixel, with ``bands``
    (``{name: (lo, hi)}``) shaded. The first set (the teacher, by convention) is drawn in black."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.4))
    else:
        fig = ax.figure
    for i, (name, x) in enumerate(images.items()):
        freqs, power = radial_spectrum(x)
        ax.plot(freqs[1:].numpy(), power[1:].numpy(), label=name, color="black" if i == 0 else None,
                linewidth=2 if i == 0 else 1.2)
    for j, (name, (lo, hi)) in enumerate((bands or {}).items()):
        ax.axvspan(lo, min(hi, 0.5), color=f"C{j}", alpha=0.08)
        ax.text((lo + min(hi, 0.5)) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="top",
                fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("frequency (cycles/pixel)")
    ax.set_ylabel("power")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@torch.no_grad()
def teacher_student_figure(teacher: torch.nn.Module, student: torch.nn.Module, seed: int, n: int = 8,
                           name: str = "student", bands: dict[str, tuple[float, float]] | None = None):
    """Teacher and student images for the same ``n`` noise vectors (drawn from ``seed``), and the
    radial spectra of both image sets: the static view behind :func:`kdlab.widgets.student_explorer`."""
    device = next(teacher.parameters()).device
    z = teacher.sample_noise(n, torch.Generator().manual_seed(seed), device=device)  # (n, z_dim)
    t_img, s_img = teacher.eval()(z), student.eval()(z)  # (n, C, H, W)
    nrow = max(1, int(round(n ** 0.5)))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    for ax, img, title in zip(axes, (t_img, s_img), ("teacher", name)):
        ax.imshow(grid_image(img, nrow), cmap="gray")
        ax.set_title(f"{title} (noise seed {seed})")
        ax.axis("off")
    plot_spectra({"teacher": t_img, name: s_img}, bands, ax=axes[2], title="spectra of these images")
    fig.tight_layout()
    return fig


def print_table(rows: dict[str, dict], columns: dict[str, str], name: str = "model") -> None:
    """Print ``rows`` (row name -> dict of values) as a fixed-width table. ``columns`` maps each
    header to ``"key:format"`` (a format spec of the value, e.g. ``"fid:.1f"``, ``"parameters:,"``);
    a missing value prints as ``-``. Where a row also holds ``"<key>_ci"`` (an interval ``[lo, hi]``,
    as :class:`kdlab.evaluation.Evaluator` reports), the cell reads ``value [lo, hi]``."""
    specs = [(header, *spec.split(":", 1)) if ":" in spec else (header, spec, "") for header, spec in columns.items()]

    def cell(row, k, f):
        if row.get(k) is None:
            return "-"
        ci = row.get(f"{k}_ci")
        return format(row[k], f) + (f" [{format(ci[0], f)}, {format(ci[1], f)}]" if ci is not None else "")

    cells = [[str(r)] + [cell(row, k, f) for _, k, f in specs] for r, row in rows.items()]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate([name] + [h for h, _, _ in specs])]
    print("  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i])
                    for i, h in enumerate([name] + [h for h, _, _ in specs])))
    for c in cells:
        print("  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(c)))
