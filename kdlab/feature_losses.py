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

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .taps import features
from .utils import at_least_float32, check_choice

FEATURE_LOSSES = ("hint", "attention", "gram")


def check_maps(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` unless both are ``[N, C, H, W]`` with the same N, H and W."""
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
    check_maps(student_feats, teacher_feats, "attention_transfer")
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
        check_maps(fs[name], ft[name], f"layer {name!r}")
    return {name: (fs[name].shape[1], ft[name].shape[1]) for name in layers}


def hint_loss(adapted_student: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """FitNets: ``mean (r(F_S) - F_T)^2`` for adapted student features and teacher features ``[N, Ct, H, W]``."""
    return F.mse_loss(at_least_float32(adapted_student), at_least_float32(teacher_feats.detach()))


def gram_loss(adapted_student: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """Style: ``mean (G(r(F_S)) - G(F_T))^2`` with :func:`gram_matrix` ``[N, Ct, Ct]``."""
    return F.mse_loss(gram_matrix(adapted_student), gram_matrix(teacher_feats.detach()))


def feature_distillation(kind: str, student_feats: dict[str, torch.Tensor], teacher_feats: dict[str, torch.Tensor],
                         adapters: FeatureAdapters | None = None, p: float = 2.0,
                         attention_loss: Callable = attention_transfer) -> torch.Tensor:
    """Mean over the layers of ``student_feats`` of the ``kind`` loss: :func:`hint_loss`,
    :func:`attention_transfer` or :func:`gram_loss` (hint and Gram on ``adapters(name, F_S)``).
    A scalar, float32 (float64 for float64 features). ``attention_loss`` lets a training step pass
    :func:`kdlab.kernels.attention_transfer`, the same loss on the fused CUDA kernel."""
    check_choice("kind", kind, FEATURE_LOSSES)
    if kind != "attention" and adapters is None:
        raise ValueError(f"feature loss {kind!r} needs FeatureAdapters (student channels -> teacher channels)")
    terms = []
    for name, fs in student_feats.items():
        ft = teacher_feats[name].detach()
        check_maps(fs, ft, f"layer {name!r}")
        if kind == "attention":
            terms.append(attention_loss(fs, ft, p))
        else:
            terms.append((hint_loss if kind == "hint" else gram_loss)(adapters(name, fs), ft))
    return torch.stack(terms).mean()
