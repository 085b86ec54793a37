"""Assignment 04: the three feature-distillation terms, with the adapter.

    def my_feature_terms(fs, ft, adapter) -> {"hint": ..., "attention": ..., "gram": ...}

``fs`` ``[B, C_S, H, W]`` are the student's features, ``ft`` ``[B, C_T, H, W]`` the teacher's;
``adapter`` maps the student's channels to the teacher's (a 1x1 convolution). Compared with
:mod:`kdlab.feature_losses` in float64, values and gradients (to the features and the adapter).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import bench, feature_losses, kernels
from ..methods import gan
from .core import ExerciseError, Forbidden, Part, close, run_parts, tensor

FORBIDDEN = Forbidden("kdlab's feature losses", python=(feature_losses, kernels, bench, gan.FeatureTerm))
REFERENCE = {"hint": lambda fs, ft, r: feature_losses.hint_loss(r(fs), ft),
             "attention": lambda fs, ft, r: feature_losses.attention_transfer(fs, ft),
             "gram": lambda fs, ft, r: feature_losses.gram_loss(r(fs), ft)}


def _setup(seed: int):
    g = torch.Generator().manual_seed(seed)
    shape = (3, 4, 5, 6) if seed == 0 else (2, 3, 4, 4)
    fs = torch.randn(shape, generator=g, dtype=torch.float64)
    ft = 2 * torch.randn(shape[0], 7, *shape[2:], generator=g, dtype=torch.float64)
    torch.manual_seed(60 + seed)
    adapter = nn.Conv2d(shape[1], 7, 1).double()
    return fs, ft, adapter


def _value_and_grads(term, fs, ft, adapter):
    fs = fs.clone().requires_grad_(True)
    grads = torch.autograd.grad(term(fs, ft, adapter), [fs, *adapter.parameters()], allow_unused=True)
    return [torch.zeros(()) if g is None else g for g in grads]


def _part(name: str, hints):
    def check(fn, seed: int) -> int:
        fs, ft, adapter = _setup(seed)
        ft_before, r_before = ft.clone(), [p.detach().clone() for p in adapter.parameters()]
        out = fn(fs.clone().requires_grad_(True), ft.clone(), adapter)
        if not torch.equal(ft, ft_before) or any(not torch.equal(p, q) for p, q in zip(adapter.parameters(), r_before)):
            raise ExerciseError("the teacher's features or the adapter changed: compute the terms, change nothing")
        if not isinstance(out, dict) or set(out) != set(REFERENCE):
            raise ExerciseError(f"return a dict with the keys {sorted(REFERENCE)}, got "
                                f"{sorted(out) if isinstance(out, dict) else type(out).__name__}")
        value = tensor(out[name], f"my_feature_terms(...)[{name!r}]")
        if value.dim() != 0:
            raise ExerciseError(f"{name}: return one number (a 0-d tensor), got shape {list(value.shape)}")
        ref = REFERENCE[name](fs, ft, adapter).item()
        if abs(value.item() - ref) > 1e-6 * abs(ref) + 1e-12:
            for variant, hint in hints:
                if abs(value.item() - variant(fs, ft, adapter).item()) < 1e-9 * max(1, abs(ref)):
                    raise ExerciseError(f"{name}: {hint}")
            raise ExerciseError(f"{name}: {value.item():.6g}, expected {ref:.6g} (see the formula above the cell)")
        mine = _value_and_grads(lambda a, b, r: fn(a, b, r)[name], fs, ft, adapter)
        theirs = _value_and_grads(REFERENCE[name], fs, ft, adapter)
        if not all(close(a, b) for a, b in zip(mine, theirs)):
            raise ExerciseError(f"{name}: the value is right but its gradient to the student's features or the adapter "
                                "is not: keep the computation in differentiable torch operations")
        return 3
    return check


gram = feature_losses.gram_matrix
mean_sq = lambda a, b: (a - b).pow(2).mean()
PARTS = {
    "hint": Part("hint loss through the adapter", _part("hint", [
        (lambda fs, ft, r: (r(fs) - ft).pow(2).sum(), "average the squared differences (mean), do not sum them"),
        (lambda fs, ft, r: (r(fs) - ft).abs().mean(), "the hint loss squares the differences: mean (r(F_S) - F_T)^2"),
    ])),
    "attention": Part("attention transfer", _part("attention", [
        (lambda fs, ft, r: (fs.pow(2).mean(1).flatten(1) - ft.pow(2).mean(1).flatten(1)).pow(2).sum(1).mean(),
         "normalise each image's map a to unit L2 norm before comparing"),
        (lambda fs, ft, r: (feature_losses.attention_map(fs, 1.0) - feature_losses.attention_map(ft, 1.0)).pow(2)
         .sum(1).mean(), "use the squared activations F^2, not |F|"),
        (lambda fs, ft, r: (feature_losses.attention_map(fs) - feature_losses.attention_map(ft)).pow(2).mean(),
         "sum the squared differences over positions (||a_S - a_T||^2), then average over images"),
    ])),
    "gram": Part("Gram loss through the adapter", _part("gram", [
        (lambda fs, ft, r: mean_sq(gram(r(fs)) * fs.shape[2] * fs.shape[3], gram(ft) * ft.shape[2] * ft.shape[3]),
         "divide F F^T by the number of positions H W"),
        (lambda fs, ft, r: (gram(r(fs)) - gram(ft)).pow(2).sum(), "average the squared differences (mean), do not sum"),
    ])),
}


def check_feature_terms(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check ``my_feature_terms`` (parts ``hint``, ``attention``, ``gram``); ``hidden``: the graders' variant."""
    run_parts(fn, PARTS, part, hidden, FORBIDDEN, "my_feature_terms")
