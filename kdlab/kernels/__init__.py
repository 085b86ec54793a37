"""Fused CUDA training kernels for distillation losses, with the pure-PyTorch reference everywhere else.

Two custom operators, registered with ``torch.library`` so they work in eager mode, under autograd
and under ``torch.compile``:

- ``torch.ops.kdlab.kl_fused(student, teacher, temperature, reverse, reduction=0) -> (loss, grad)``:
  per-position ``T^2 KL`` ``[N, *spatial]`` (float32) for logits ``[N, K, *spatial]``, or its mean
  (``reduction=1``) or sum (``2``), and that loss's gradient with respect to the student logits, in
  one pass over memory;
- ``torch.ops.kdlab.attention_fused(student, teacher, p, reduction=0) -> (loss, grad)``: attention
  transfer per sample ``[N]`` (or its mean / sum) for features ``[N, C_S, H, W]`` / ``[N, C_T, H, W]``
  and its gradient.

Implementations: CUDA kernels (``kl_kernel.cuh``, ``attention_kernel.cuh``, launched from ``kl.cu`` and
``attention.cu``, registered by ``ops.cpp``) built on first
use when possible (:mod:`kdlab.kernels.build`), and the reference (:mod:`kdlab.kernels.reference`)
for every other device and as the fallback. The forward saves only the gradient (one tensor the
size of the student input) for the backward. With a mean or sum reduction inside the op the saved gradient is already the
answer, and the backward returns it as is when the incoming gradient is 1 (the usual case; on a GPU
for gradients of at least ``CHECK_UPSTREAM_ONE_BYTES``, below which multiplying is cheaper than the
host synchronisation that checking costs). **Teachers
are frozen: the ops give no gradient for the teacher input** and raise if one is requested.

Public entry points: :func:`kl_distillation` and :func:`attention_transfer` here take the same
arguments as :func:`kdlab.losses.kl_distillation` and :func:`kdlab.feature_losses.attention_transfer`
(the formulas, which never touch a kernel) and route: the fused op for CUDA tensors when
:func:`available` is true and a backward will follow, the formula otherwise.
``KDLAB_KERNELS=reference`` forces the reference; ``KDLAB_KERNELS=fused``
makes a failed build an error instead of a fallback.
"""
from __future__ import annotations

import functools
import warnings

import torch

from .. import feature_losses, losses
from . import build, reference

MAX_SHARED_BYTES = 96 * 1024  # common.cuh: the most dynamic shared memory a kernel block uses
MAX_CLASSES = MAX_SHARED_BYTES // 8 - 1  # kl_kernel.cuh: two float rows of K | 1 values per position
MAX_POSITIONS = 8192  # attention_kernel.cuh: two float maps of H * W values in shared memory
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# CUDA gradients at least this large skip the backward's multiply when the upstream gradient is 1, at the
# cost of one host synchronisation; reading and writing 32 MiB at ~3 TB/s takes about as long (~20 us)
CHECK_UPSTREAM_ONE_BYTES = 32 * 2 ** 20

_lib = None
_state: dict = {"checked": False, "available": False, "reason": "not checked yet", "warned": False}


def _define_ops() -> None:
    """Define the op schemas and their reference, fake and autograd registrations (once)."""
    global _lib
    if _lib is not None:
        return
    _lib = torch.library.Library("kdlab", "DEF")
    # reduction: 0 = none, 1 = mean, 2 = sum; the returned gradient is that of the (reduced) loss
    _lib.define("kl_fused(Tensor student, Tensor teacher, float temperature, bool reverse, int reduction=0) -> (Tensor, Tensor)")
    _lib.define("attention_fused(Tensor student, Tensor teacher, float p, int reduction=0) -> (Tensor, Tensor)")
    # the reference serves every backend without a dedicated kernel (CPU, MPS, CUDA before a build)
    _lib.impl("kl_fused", reference.kl_fused, "CompositeExplicitAutograd")
    _lib.impl("attention_fused", reference.attention_fused, "CompositeExplicitAutograd")

    @torch.library.register_fake("kdlab::kl_fused")
    def _kl_fake(student, teacher, temperature, reverse, reduction=0):
        shape = (student.shape[0], *student.shape[2:]) if reduction == 0 else ()
        loss = student.new_empty(shape, dtype=torch.promote_types(student.dtype, torch.float32))
        return loss, student.new_empty(student.shape)  # contiguous, like the kernels' output

    @torch.library.register_fake("kdlab::attention_fused")
    def _at_fake(student, teacher, p, reduction=0):
        shape = (student.shape[0],) if reduction == 0 else ()
        return student.new_empty(shape, dtype=torch.promote_types(student.dtype, torch.float32)), student.new_empty(student.shape)

    def _setup(ctx, inputs, output, reduction_index):
        ctx.reduced = len(inputs) > reduction_index and inputs[reduction_index] != 0  # mean or sum in the op
        ctx.n_inputs = len(inputs)
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the (non-differentiable) grad output

    def _backward(ctx, grad_loss, _grad_of_grad):
        if torch.is_grad_enabled():  # create_graph=True: the gradient would silently lack its own gradient
            raise RuntimeError("kdlab's fused distillation ops support one backward pass only, not create_graph=True "
                               "(double backward, e.g. a gradient penalty through this loss); set "
                               "KDLAB_KERNELS=reference so the public losses use plain autograd")
        if ctx.needs_input_grad[1]:
            raise RuntimeError("kdlab's fused distillation ops give no gradient for the teacher input: teachers "
                               "are frozen (detach the teacher tensor or use requires_grad=False)")
        nones = (None,) * (ctx.n_inputs - 1)
        if grad_loss is None:  # the loss output was not used: no gradient flows
            return (None, *nones)
        (grad,) = ctx.saved_tensors
        acc = torch.promote_types(grad.dtype, torch.float32)
        if ctx.reduced:  # grad is already d loss / d student; the upstream gradient is a scalar, usually 1
            eager = type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling()  # not traced (fake) tensors
            # on a GPU the check copies a scalar to the host (a synchronisation, some 10-20 us); worth it only when
            # the multiply it saves, a pass over the gradient, costs more
            worth = not grad.is_cuda or (grad.numel() * grad.element_size() >= CHECK_UPSTREAM_ONE_BYTES
                                         and not torch.cuda.is_current_stream_capturing())  # no .item() in a graph
            if eager and worth and not grad_loss.requires_grad and grad_loss.item() == 1.0:
                return (grad, *nones)  # no extra pass over memory
            return ((grad * grad_loss.to(acc)).to(grad.dtype), *nones)
        extra = [1] * (grad.dim() - grad_loss.dim() - 1)  # KL: loss (N, *spatial); attention: loss (N,)
        scale = grad_loss.reshape(grad_loss.shape[0], 1, *grad_loss.shape[1:], *extra).to(acc)
        return ((grad * scale).to(grad.dtype), *nones)

    torch.library.register_autograd("kdlab::kl_fused", _backward,
                                    setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, 4))
    torch.library.register_autograd("kdlab::attention_fused", _backward,
                                    setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, 3))


_define_ops()


def _announce(reason: str) -> None:
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(f"kdlab: the fused CUDA kernels are not used ({reason}); the pure-PyTorch reference "
                      "implementation runs instead (same results, slower).", RuntimeWarning, stacklevel=3)


def available() -> bool:
    """Whether the fused CUDA path is active: on first call with a CUDA device this builds (or loads
    the cached build of) the kernels. :func:`reason` says why not when false."""
    if not _state["checked"]:
        _state["checked"] = True
        why = build.missing_requirement()
        if why is None:
            try:
                build.compile_and_load()
                _state["available"], why = True, None
            except Exception as err:  # a failed build must not stop training: fall back, say why
                why = f"building them failed: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
        _state["reason"] = why or "active"
        if why and build.mode() == "fused":
            raise RuntimeError(f"KDLAB_KERNELS=fused but the fused kernels are unavailable: {why}")
    return _state["available"]


def reason() -> str:
    """``"active"``, or why the fused kernels are not used (after :func:`available` ran)."""
    return _state["reason"]


@functools.lru_cache(maxsize=None)
def _device_limits(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    shared = min(getattr(props, "shared_memory_per_block_optin", 48 * 1024), MAX_SHARED_BYTES)
    # kl_max_classes, attention_max_positions: two float rows of K | 1; two float maps of H W and one
    # float per warp of the 1,024-thread block
    return shared // 8 - 1, min(MAX_POSITIONS, (shared // 4 - 1024 // 32) // 2)


def device_limits(device: torch.device | str | int) -> tuple[int, int]:
    """``(max classes K, max positions H W)`` the kernels accept on this CUDA device, from its
    shared memory per block (96 KiB on A100 / H100 give 12,287 and 8,192; 64 KiB on a T4 give 8,191
    and 8,176). The public losses send larger inputs to the reference."""
    return _device_limits(torch.device(device).index if torch.device(device).index is not None
                          else torch.cuda.current_device())


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


def fused_path(student: torch.Tensor, teacher: torch.Tensor, *, classes: int | None = None,
               positions: int | None = None) -> bool:
    """Whether a public loss should call the fused op: a backward will follow (the student needs a
    gradient and grad mode is on; the kernels always write one), :func:`use_fused` holds, and ``classes``
    (K) / ``positions`` (H W) fit the device's :func:`device_limits`."""
    if not (student.requires_grad and torch.is_grad_enabled()) or not use_fused(student, teacher):
        return False
    max_classes, max_positions = device_limits(student.device)
    return (classes is None or classes <= max_classes) and (positions is None or positions <= max_positions)


def kl_fused_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  direction: str = "forward", reduction: str = "mean") -> torch.Tensor:
    """:func:`kdlab.losses.kl_distillation` through ``torch.ops.kdlab.kl_fused`` (arguments already
    validated by the caller; any device: CUDA tensors use the kernel once built)."""
    if teacher_logits.requires_grad:
        raise RuntimeError("kdlab's fused KL gives no gradient for the teacher logits: teachers are frozen "
                           "(pass teacher_logits.detach())")
    code = {"none": 0, "mean": 1, "sum": 2}[reduction]
    return torch.ops.kdlab.kl_fused(student_logits, teacher_logits, float(temperature), direction == "reverse", code)[0]


def attention_fused_loss(student_feats: torch.Tensor, teacher_feats: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """:func:`kdlab.feature_losses.attention_transfer` (batch mean) through ``torch.ops.kdlab.attention_fused``."""
    return torch.ops.kdlab.attention_fused(student_feats, teacher_feats.detach(), float(p), 1)[0]


def kl_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                    direction: str = "forward", reduction: str = "mean") -> torch.Tensor:
    """:func:`kdlab.losses.kl_distillation` (same arguments, same result) on the fused CUDA kernel
    when :func:`fused_path` allows it, and the formula itself everywhere else. The training steps of
    :mod:`kdlab.methods` call this one; the kernel gives no gradient for the teacher logits."""
    temperature = losses.check_kl_arguments(student_logits, teacher_logits, temperature, direction, reduction)
    if fused_path(student_logits, teacher_logits, classes=student_logits.shape[1]):
        return kl_fused_loss(student_logits, teacher_logits, temperature, direction, reduction)
    return losses.kl_distillation(student_logits, teacher_logits, temperature, direction, reduction)


def attention_transfer(student_feats: torch.Tensor, teacher_feats: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """:func:`kdlab.feature_losses.attention_transfer` on the fused CUDA kernel when :func:`fused_path`
    allows it, the formula everywhere else."""
    if student_feats.dim() == 4 and teacher_feats.dim() == 4 and fused_path(
            student_feats, teacher_feats, positions=student_feats.shape[2] * student_feats.shape[3]):
        feature_losses.check_maps(student_feats, teacher_feats, "attention_transfer")
        return attention_fused_loss(student_feats, teacher_feats, p)
    return feature_losses.attention_transfer(student_feats, teacher_feats, p)
