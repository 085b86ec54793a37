"""Fused CUDA training kernels for distillation losses, with the pure-PyTorch reference everywhere else.

Custom operators, registered with ``torch.library`` so they work in eager mode, under autograd and
under ``torch.compile``:

- ``torch.ops.kdlab.kl_fused(student, teacher, temperature, reverse, reduction=0, weight=1.0,
  weight_tensor=None) -> (loss, grad)``: per-position ``T^2 KL`` ``[N, *spatial]`` (float32) for logits
  ``[N, K, *spatial]``, or its mean (``reduction=1``) or sum (``2``), and that loss's gradient with
  respect to the student logits, in one pass over memory;
- ``torch.ops.kdlab.attention_fused(student, teacher, p, reduction=0, weight=1.0, weight_tensor=None)
  -> (loss, grad)``: attention transfer per sample ``[N]`` (or its mean / sum) for features
  ``[N, C_S, H, W]`` / ``[N, C_T, H, W]`` and its gradient;
- both multiply the loss and the gradient by ``weight`` and by ``weight_tensor``'s one float32 value,
  which the kernels read on the device;
- ``torch.ops.kdlab.apply_upstream_(grad, factor)``: the backward's step (below).

Implementations: CUDA kernels (``kl_kernel.cuh``, ``attention_kernel.cuh``, launched from ``kl.cu`` and
``attention.cu``; ``scale.cu``; registered by ``ops.cpp``) built on first use when possible
(:mod:`kdlab.kernels.build`); Triton kernels (:mod:`kdlab.kernels.triton_ops`) in their place where only the
compiler is missing; and the reference (:mod:`kdlab.kernels.reference`) for every other device and as the
fallback. :func:`backend` says which runs. The forward saves only the gradient (one tensor the size of the
student input) for the backward. With a mean or sum reduction inside the op the saved gradient is already
the answer up to the incoming scalar gradient, and in eager mode the backward hands both to
``apply_upstream_``, which reads the scalar on the device: when it is 1 (the usual case, and the case of a
weighted loss whose weight went into the op) no thread touches the gradient, otherwise it is scaled in
place; the CPU never waits for the GPU. **So after a backward the op's second output holds the gradient
that backward returned, and a second backward through the same graph (``retain_graph=True``) is refused**
with a clear error rather than scaling twice. Under ``torch.compile`` the backward
multiplies (one pass). **Teachers are frozen: the ops give no gradient for the teacher input** and raise
if one is requested.

Public entry points: :func:`kl_distillation` and :func:`attention_transfer` here take the arguments of
:func:`kdlab.losses.kl_distillation` and :func:`kdlab.feature_losses.attention_transfer` (the formulas, which
never touch a kernel), and a ``weight``, and route: the fused op for CUDA tensors when :func:`available` is
true and a backward will follow, the formula otherwise. ``KDLAB_KERNELS=reference`` forces the reference;
``KDLAB_KERNELS=fused`` makes a failed build an error instead of a fallback.
"""
from __future__ import annotations

import math
import warnings

import torch

from .. import feature_losses, losses
from . import build, reference
from .schema import define_ops

__all__ = ["FUSED_DTYPES",
           "attention_fused_loss", "attention_transfer", "available", "backend", "build", "fused_path",
           "kl_distillation", "kl_fused_loss", "reason", "reference", "use_fused"]

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_state: dict = {"checked": False, "available": False, "reason": "not checked yet", "warned": False, "backend": "reference"}

define_ops()


def _announce(reason: str) -> None:
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(f"kdlab: the fused CUDA kernels are not used ({reason}); the pure-PyTorch reference "
                      "implementation runs instead (same results, slower).", RuntimeWarning, stacklevel=3)


def _register_triton() -> None:
    """Make the Triton kernels (:mod:`.triton_ops`) the ops' CUDA implementations (kept alive in ``_state``)."""
    from . import triton_ops

    lib = torch.library.Library("kdlab", "IMPL")
    lib.impl("kl_fused", triton_ops.kl_fused, "CUDA")
    lib.impl("attention_fused", triton_ops.attention_fused, "CUDA")
    lib.impl("apply_upstream_", triton_ops.apply_upstream_, "CUDA")
    _state["triton_library"] = lib


def available() -> bool:
    """Whether a fused path is active: on first call with a CUDA device this builds (or loads the cached
    build of) the CUDA kernels, or, when only the compiler (``nvcc``, ``ninja``) is missing, registers the
    Triton kernels. :func:`backend` says which, :func:`reason` why none when false."""
    if not _state["checked"]:
        _state["checked"] = True
        why = build.missing_requirement() if build.mode() != "triton" else "KDLAB_KERNELS=triton"
        if why is None:
            try:
                build.compile_and_load()
                _state["available"], _state["backend"], why = True, "cuda", None
            except Exception as err:  # a failed build must not stop training: fall back, say why
                why = f"building them failed: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
        elif "nvcc" in why or "ninja" in why or build.mode() == "triton":  # no compiler: Triton needs none
            triton_why = build.triton_possible()
            if triton_why is None:
                _register_triton()
                _state["available"], _state["backend"], why = True, "triton", None
            else:
                why = f"{why}, and the Triton kernels cannot run either: {triton_why}"
        _state["reason"] = why or "active"
        if why and build.mode() in ("fused", "triton"):
            raise RuntimeError(f"KDLAB_KERNELS={build.mode()} but the fused kernels are unavailable: {why}")
    return _state["available"]


def backend() -> str:
    """Which implementation the fused ops use on CUDA tensors: ``"cuda"`` (the compiled kernels),
    ``"triton"`` or ``"reference"`` (checks :func:`available` first)."""
    available()
    return _state["backend"]


def reason() -> str:
    """``"active"``, or why the fused kernels are not used (after :func:`available` ran)."""
    return _state["reason"]


def use_fused(x: torch.Tensor, other: torch.Tensor | None = None) -> bool:
    """Whether a loss on ``x`` (and ``other``, the teacher side, which must have the same dtype and
    device) should take the fused path: CUDA tensors of a supported dtype with the kernels available.
    Announces the fallback (once) when a CUDA tensor has to use the reference."""
    if not x.is_cuda or x.dtype not in FUSED_DTYPES:
        return False
    if other is not None and (other.dtype != x.dtype or other.device != x.device):
        return False  # mixed precision or devices: the reference handles them
    if available():
        return True
    _announce(reason())
    return False


def fused_path(student: torch.Tensor, teacher: torch.Tensor) -> bool:
    """Whether a public loss should call the fused op: a backward will follow (the student needs a
    gradient and grad mode is on; the kernels always write one) and :func:`use_fused` holds."""
    return student.requires_grad and torch.is_grad_enabled() and use_fused(student, teacher)


def _offsets_fit(student: torch.Tensor, teacher: torch.Tensor) -> bool:
    """Whether the KL kernel's 32-bit offsets within a sample reach all of logits ``[N, K, *spatial]``: in the
    positions-innermost layout ``(K + 64) * prod(spatial) < 2^31`` (``kColumnOffsetSlack`` in kl_kernel.cuh; kl.cu
    checks the same); the class-innermost layouts ([N, K], both channels-last) have no such limit."""
    positions = math.prod(student.shape[2:])
    channels_last = reference.kl_grad_format(student, teacher) == torch.channels_last  # the layout kl.cu reads
    return positions == 1 or channels_last or (student.shape[1] + 64) * positions < 2 ** 31


def _split_weight(weight: float | torch.Tensor, like: torch.Tensor) -> tuple[float, torch.Tensor | None]:
    """A loss weight as the ops take it: a Python float, or a tensor of one value as float32 on ``like``'s device
    (already there, as a gradient scaler's scale is, it is read by the kernel: no host synchronisation; from
    another device it is copied). Its gradient is not computed: the routed losses send a weight that requires
    one to the formulas."""
    if isinstance(weight, torch.Tensor):
        if weight.numel() != 1:
            raise ValueError(f"weight must be a number or a tensor of one value, got shape {tuple(weight.shape)}")
        return 1.0, weight.detach().reshape(()).to(like.device, torch.float32)
    return float(weight), None


def _weight_needs_grad(weight: float | torch.Tensor) -> bool:
    return isinstance(weight, torch.Tensor) and weight.requires_grad and torch.is_grad_enabled()


def kl_fused_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  direction: str = "forward", reduction: str = "mean", weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``weight *`` :func:`kdlab.losses.kl_distillation` through ``torch.ops.kdlab.kl_fused`` (arguments already
    validated by the caller; any device: CUDA tensors use the kernel once built). The weight is applied
    inside the kernel, to the loss and to the gradient it writes."""
    if teacher_logits.requires_grad:
        raise RuntimeError("kdlab's fused KL gives no gradient for the teacher logits: teachers are frozen "
                           "(pass teacher_logits.detach())")
    code = {"none": 0, "mean": 1, "sum": 2}[reduction]
    w, w_tensor = _split_weight(weight, student_logits)
    return torch.ops.kdlab.kl_fused(student_logits, teacher_logits, float(temperature), direction == "reverse", code,
                                    w, w_tensor)[0]


def attention_fused_loss(student_feats: torch.Tensor, teacher_feats: torch.Tensor, p: float = 2.0,
                         weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``weight *`` :func:`kdlab.feature_losses.attention_transfer` (batch mean) through
    ``torch.ops.kdlab.attention_fused``."""
    w, w_tensor = _split_weight(weight, student_feats)
    return torch.ops.kdlab.attention_fused(student_feats, teacher_feats.detach(), float(p), 1, w, w_tensor)[0]


def kl_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                    direction: str = "forward", reduction: str = "mean", weight: float | torch.Tensor = 1.0
                    ) -> torch.Tensor:
    """``weight *`` :func:`kdlab.losses.kl_distillation` (same other arguments, same result) on the fused CUDA
    kernel when :func:`fused_path` allows it, and the formula itself everywhere else. The training steps of
    :mod:`kdlab.methods` call this one; the kernel gives no gradient for the teacher logits. Passing a loss's
    weight here (the alpha of weighted distillation, or a tensor such as a gradient scaler's scale) rather
    than multiplying the result lets the kernel apply it as it writes the gradient: no extra pass over a
    logit-sized tensor in the backward. A weight tensor that requires a gradient takes the formula, which
    gives it one."""
    temperature = losses.check_kl_arguments(student_logits, teacher_logits, temperature, direction, reduction)
    if (not _weight_needs_grad(weight) and _offsets_fit(student_logits, teacher_logits)
            and fused_path(student_logits, teacher_logits)):
        return kl_fused_loss(student_logits, teacher_logits, temperature, direction, reduction, weight)
    loss = losses.kl_distillation(student_logits, teacher_logits, temperature, direction, reduction)
    return loss if isinstance(weight, (int, float)) and weight == 1 else weight * loss


def attention_transfer(student_feats: torch.Tensor, teacher_feats: torch.Tensor, p: float = 2.0,
                       weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``weight *`` :func:`kdlab.feature_losses.attention_transfer` on the fused CUDA kernel when
    :func:`fused_path` allows it, the formula everywhere else (the weight as in :func:`kl_distillation`)."""
    if (student_feats.dim() == 4 and teacher_feats.dim() == 4 and not _weight_needs_grad(weight)
            and fused_path(student_feats, teacher_feats)):
        feature_losses.check_maps(student_feats, teacher_feats, "attention_transfer")
        return attention_fused_loss(student_feats, teacher_feats, p, weight)
    loss = feature_losses.attention_transfer(student_feats, teacher_feats, p)
    return loss if isinstance(weight, (int, float)) and weight == 1 else weight * loss
