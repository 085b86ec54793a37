"""Feature (intermediate-layer) distillation losses, notebook 04.

Teacher features ``F_T`` ``[N, Ct, H, W]`` and student features ``F_S`` ``[N, Cs, H, W]`` taken at
layers of the same spatial size (channel counts may differ):

- **hint** (FitNets, Romero et al., arXiv 1412.6550): a learned 1x1 convolution ``r`` maps the
  student's channels to the teacher's, ``L = mean (r(F_S) - F_T)^2`` (GAN Compression uses the same
  adapters);
- **attention transfer** (Zagoruyko and Komodakis, arXiv 1612.03928): the spatial map
  ``a = mean_c |F|^p`` ``[N, H*W]``, normalised per sample, ``L = mean_n || a_S/||a_S|| - a_T/||a_T|| ||^2``
  (no adapter: the maps have no channel axis);
- **Gram / style** (Gatys et al., arXiv 1505.07376 and 1508.06576): ``G = F F^T / (H W)`` ``[N, C, C]``
  over the adapted student features, ``L = mean (G(r(F_S)) - G(F_T))^2``. A Gram matrix keeps
  which channels fire together and drops where: texture statistics, not layout.

The teacher side is always detached (teachers are frozen).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .taps import features
from .utils import at_least_float32, check_choice

FEATURE_LOSSES = ("hint", "attention", "gram")


def _check_maps(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(f"{what}: expected feature maps [N, C, H, W], got student {list(student.shape)}, "
                         f"teacher {list(teacher.shape)}")
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"{what}: batch and spatial sizes must match, got student {list(student.shape)}, "
                         f"teacher {list(teacher.shape)} (choose layers of the same resolution)")


def attention_map(feats: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Normalised spatial attention ``a / ||a||_2`` ``[N, H*W]`` with ``a = mean_c |F|^p`` of
    features ``[N, C, H, W]``, computed in float32 or wider (float64 stays float64)."""
    a = at_least_float32(feats).abs().pow(p).mean(1).flatten(1)  # (N, H*W)
    return F.normalize(a, dim=1, eps=1e-12)


def attention_transfer(student_feats: torch.Tensor, teacher_feats: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``mean_n || a_S/||a_S|| - a_T/||a_T|| ||_2^2`` for features ``[N, Cs, H, W]`` and ``[N, Ct, H, W]``;
    between 0 and 2 (unit vectors with non-negative entries)."""
    _check_maps(student_feats, teacher_feats, "attention_transfer")
    from . import kernels

    if kernels.fused_path(student_feats, teacher_feats, positions=student_feats.shape[2] * student_feats.shape[3]):
        return kernels.attention_transfer(student_feats, teacher_feats, p)  # fused CUDA kernel
    diff = attention_map(student_feats, p) - attention_map(teacher_feats.detach(), p)  # (N, H*W)
    return diff.pow(2).sum(1).mean()


def gram_matrix(feats: torch.Tensor) -> torch.Tensor:
    """``G = F F^T / (H W)`` ``[N, C, C]`` for features ``[N, C, H, W]``: the channel co-activations,
    averaged over positions, so any permutation of the positions leaves it unchanged."""
    if feats.dim() != 4:
        raise ValueError(f"gram_matrix: expected features [N, C, H, W], got {list(feats.shape)}")
    f = feats.to(torch.promote_types(feats.dtype, torch.float32)).flatten(2)  # (N, C, H*W), float32 or wider
    return f @ f.transpose(1, 2) / f.shape[2]


class FeatureAdapters(nn.Module):
    """One learned 1x1 convolution per distilled layer, student channels -> teacher channels.

    ``channels`` maps a layer name to ``(student_channels, teacher_channels)``; ``self(name, F_S)``
    returns the adapted features ``[N, Ct, H, W]``. Layer names may contain dots."""

    def __init__(self, channels: dict[str, tuple[int, int]]):
        super().__init__()
        self.names = list(channels)
        self.convs = nn.ModuleDict({n.replace(".", "__"): nn.Conv2d(cs, ct, 1) for n, (cs, ct) in channels.items()})

    def forward(self, name: str, student_feats: torch.Tensor) -> torch.Tensor:
        return self.convs[name.replace(".", "__")](student_feats)


@torch.no_grad()
def layer_channels(student: nn.Module, teacher: nn.Module, layers: Iterable[str], *inputs) -> dict[str, tuple[int, int]]:
    """``{layer: (student_channels, teacher_channels)}`` from one forward pass of each model on
    ``inputs``; raises if a layer's spatial sizes differ."""
    layers = list(layers)
    modes = student.training, teacher.training
    student.eval(), teacher.eval()  # a probe must not update BatchNorm statistics
    try:
        _, fs = features(student, layers, *inputs)
        _, ft = features(teacher, layers, *inputs)
    finally:
        student.train(modes[0]), teacher.train(modes[1])
    for name in layers:
        _check_maps(fs[name], ft[name], f"layer {name!r}")
    return {name: (fs[name].shape[1], ft[name].shape[1]) for name in layers}


def feature_distillation(kind: str, student_feats: dict[str, torch.Tensor], teacher_feats: dict[str, torch.Tensor],
                         adapters: FeatureAdapters | None = None, p: float = 2.0) -> torch.Tensor:
    """Mean over the layers of ``student_feats`` of the ``kind`` loss (``"hint"``, ``"attention"`` or
    ``"gram"``; hint and Gram need ``adapters``). A scalar, float32 (float64 for float64 features)."""
    check_choice("kind", kind, FEATURE_LOSSES)
    if kind != "attention" and adapters is None:
        raise ValueError(f"feature loss {kind!r} needs FeatureAdapters (student channels -> teacher channels)")
    terms = []
    for name, fs in student_feats.items():
        ft = teacher_feats[name].detach()
        _check_maps(fs, ft, f"layer {name!r}")
        if kind == "attention":
            terms.append(attention_transfer(fs, ft, p))
            continue
        adapted = adapters(name, fs)  # (N, Ct, H, W)
        if kind == "hint":
            terms.append(F.mse_loss(at_least_float32(adapted), at_least_float32(ft)))
        else:
            terms.append(F.mse_loss(gram_matrix(adapted), gram_matrix(ft)))
    return torch.stack(terms).mean()
