"""Triton implementations of kdlab's two fused ops, for GPUs where the CUDA build cannot run: a plain
``pip install torch`` on Linux brings Triton but no ``nvcc``. Same contract as :mod:`.reference` (loss
per position or per sample, or its mean / sum, and the gradient of that loss with respect to the
student, in one pass); :mod:`kdlab.kernels` registers them as the ops' CUDA implementations when
:func:`kdlab.kernels.backend` is ``"triton"``. On a CPU they run under Triton's interpreter
(``TRITON_INTERPRET=1``, set before Triton is imported), which is how CI tests them.

The formulas are the reference's (see its docstring); one program handles

- KL: one position of ``[N, K, P]`` (``P`` = the spatial size, 1 for ``[N, K]``), all ``K`` classes in one
  block of ``next_power_of_2(K)`` lanes (at most :data:`MAX_CLASSES`);
- attention transfer: one sample, all ``H W`` positions in one block (at most :data:`MAX_POSITIONS`),
  looping over the channels.

They are written for clarity, not tuned; ``python -m kdlab.bench`` measures them beside the CUDA kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference

MAX_CLASSES = 16384  # one block of lanes per position
MAX_POSITIONS = 8192  # one block of lanes per sample


@triton.jit
def _kl_kernel(s_ptr, t_ptr, loss_ptr, grad_ptr, K, P, temperature, grad_scale, weight, w_ptr,
               REVERSE: tl.constexpr, BLOCK_K: tl.constexpr, HAS_W: tl.constexpr):
    pid = tl.program_id(0)  # one position: sample n, spatial index j
    n = pid // P
    j = pid % P
    k = tl.arange(0, BLOCK_K)
    mask = k < K
    offsets = n * K * P + k * P + j  # the class axis has stride P in a contiguous [N, K, P]
    s = tl.load(s_ptr + offsets, mask=mask, other=float("-inf")).to(tl.float32) / temperature
    t = tl.load(t_ptr + offsets, mask=mask, other=float("-inf")).to(tl.float32) / temperature
    s_shift = s - tl.max(s, 0)
    t_shift = t - tl.max(t, 0)
    log_q = s_shift - tl.log(tl.sum(tl.exp(s_shift), 0))  # log softmax(s / T)
    log_p = t_shift - tl.log(tl.sum(tl.exp(t_shift), 0))
    q = tl.exp(log_q)
    p = tl.exp(log_p)
    if REVERSE:  # T^2 sum q (log q - log p);  d/ds = T q (log q - log p - KL)
        kl = tl.sum(tl.where(q > 0, q * (log_q - log_p), 0.0), 0)
        grad = tl.where(q > 0, temperature * q * (log_q - log_p - kl), 0.0)
    else:  # T^2 sum p (log p - log q);  d/ds = T (q - p)
        kl = tl.sum(tl.where(p > 0, p * (log_p - log_q), 0.0), 0)
        grad = temperature * (q - p)
    if HAS_W:  # the weight tensor's value, read on the device
        weight = weight * tl.load(w_ptr)
    tl.store(loss_ptr + pid, weight * temperature * temperature * kl)
    tl.store(grad_ptr + offsets, (grad * (grad_scale * weight)).to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _attention_kernel(s_ptr, t_ptr, loss_ptr, grad_ptr, CS, CT, HW, p, eps, grad_scale, weight, w_ptr,
                      BLOCK: tl.constexpr, HAS_W: tl.constexpr):
    n = tl.program_id(0)  # one sample
    j = tl.arange(0, BLOCK)
    mask = j < HW
    a_s = tl.zeros([BLOCK], dtype=tl.float32)
    a_t = tl.zeros([BLOCK], dtype=tl.float32)
    for c in range(0, CS):  # a = mean_c |F|^p, as exp(p log |F|) (0 at F = 0 for p > 0)
        x = tl.abs(tl.load(s_ptr + (n * CS + c) * HW + j, mask=mask, other=0.0).to(tl.float32))
        a_s += tl.where(x > 0, tl.exp(p * tl.log(x)), 0.0)
    for c in range(0, CT):
        x = tl.abs(tl.load(t_ptr + (n * CT + c) * HW + j, mask=mask, other=0.0).to(tl.float32))
        a_t += tl.where(x > 0, tl.exp(p * tl.log(x)), 0.0)
    a_s = a_s / CS
    a_t = a_t / CT
    norm_s = tl.maximum(tl.sqrt(tl.sum(a_s * a_s, 0)), eps)
    u = a_s / norm_s
    v = a_t / tl.maximum(tl.sqrt(tl.sum(a_t * a_t, 0)), eps)
    d = u - v
    if HAS_W:
        weight = weight * tl.load(w_ptr)
    tl.store(loss_ptr + n, weight * tl.sum(d * d, 0))  # ||u - v||^2
    g_a = 2 * (d - u * tl.sum(u * d, 0)) / norm_s  # d loss / d a_S
    for c in range(0, CS):  # d loss / d F = g_a (p / C_S) |F|^(p-1) sign(F)
        x = tl.load(s_ptr + (n * CS + c) * HW + j, mask=mask, other=0.0).to(tl.float32)
        ax = tl.abs(x)
        dfs = tl.where(ax > 0, (p / CS) * tl.exp((p - 1) * tl.log(ax)) * tl.where(x > 0, 1.0, -1.0), 0.0)
        tl.store(grad_ptr + (n * CS + c) * HW + j, (g_a * dfs * (grad_scale * weight)).to(grad_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit
def _apply_upstream_kernel(g_ptr, f_ptr, n, BLOCK: tl.constexpr):
    f = tl.load(f_ptr)  # read on the device: no host synchronisation
    if f != 1.0:  # the usual upstream gradient 1: no pass over memory
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        g = tl.load(g_ptr + i, mask=i < n)
        tl.store(g_ptr + i, (g.to(tl.float32) * f).to(g_ptr.dtype.element_ty), mask=i < n)


def _weight_pointer(weight_tensor: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """The weight tensor (one float32 value on the inputs' device), or a placeholder the kernel never reads."""
    if weight_tensor is None:
        return placeholder
    if weight_tensor.numel() != 1 or weight_tensor.dtype != torch.float32 or weight_tensor.device != placeholder.device:
        raise ValueError("weight_tensor must hold one float32 value on the inputs' device")
    return weight_tensor


def apply_upstream_(grad: torch.Tensor, factor: torch.Tensor) -> None:
    """``grad *= factor`` in place unless ``factor`` (one value on the GPU) is 1, decided on the device."""
    n = grad.numel()
    if n:
        _apply_upstream_kernel[(triton.cdiv(n, 1024),)](grad, factor.reshape(()).to(torch.float32), n, BLOCK=1024)


def _reduce(loss: torch.Tensor, reduction: int) -> torch.Tensor:
    return loss.mean() if reduction == 1 else loss.sum() if reduction == 2 else loss


def kl_fused(student: torch.Tensor, teacher: torch.Tensor, temperature: float, reverse: bool, reduction: int = 0,
             weight: float = 1.0, weight_tensor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`kdlab.kernels.reference.kl_fused` on Triton: logits ``[N, K, *spatial]`` (any float dtype);
    returns the float32 loss (per position ``[N, *spatial]``, or reduced) and the gradient (``student.dtype``)."""
    n, k = student.shape[:2]
    if k > MAX_CLASSES:
        raise ValueError(f"the Triton KL kernel takes at most {MAX_CLASSES} classes, got K={k}")
    spatial = tuple(student.shape[2:])
    s, t = student.contiguous(), teacher.contiguous()
    positions = s.numel() // max(n * k, 1)
    loss = torch.empty((n, *spatial), dtype=torch.float32, device=s.device)
    grad = torch.empty_like(s)
    count = loss.numel()
    if count:
        _kl_kernel[(count,)](s, t, loss, grad, k, positions, float(temperature),
                             1.0 / count if reduction == 1 else 1.0, float(weight), _weight_pointer(weight_tensor, loss),
                             REVERSE=bool(reverse), BLOCK_K=triton.next_power_of_2(k), HAS_W=weight_tensor is not None)
    return _reduce(loss, reduction), grad.contiguous(memory_format=reference.kl_grad_format(student, teacher))


def attention_fused(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0, reduction: int = 0,
                    weight: float = 1.0, weight_tensor: torch.Tensor | None = None, eps: float = 1e-12
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`kdlab.kernels.reference.attention_fused` on Triton: features ``[N, C_S, H, W]`` and
    ``[N, C_T, H, W]``; returns the float32 loss (per sample ``[N]``, or reduced) and the gradient."""
    n, cs, h, w = student.shape
    if h * w > MAX_POSITIONS:
        raise ValueError(f"the Triton attention kernel takes at most {MAX_POSITIONS} positions, got H W={h * w}")
    s, t = student.contiguous(), teacher.contiguous()
    loss = torch.empty(n, dtype=torch.float32, device=s.device)
    grad = torch.empty_like(s)
    if n:
        _attention_kernel[(n,)](s, t, loss, grad, cs, t.shape[1], h * w, float(p), eps,
                                1.0 / n if reduction == 1 else 1.0, float(weight), _weight_pointer(weight_tensor, loss),
                                BLOCK=triton.next_power_of_2(h * w), HAS_W=weight_tensor is not None)
    return _reduce(loss, reduction), grad


def check_against_reference(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> dict:
    """Largest errors of :func:`kl_fused` (per position) against the float64 reference, for both directions:
    ``{"forward": {"loss_max_rel_error", "grad_max_error"}, "reverse": {...}}`` (notebook 07)."""
    out = {}
    for reverse in (False, True):
        loss, grad = kl_fused(student, teacher, temperature, reverse, 0)
        ref_loss, ref_grad = reference.kl_fused(student.double(), teacher.double(), temperature, reverse, 0)
        out["reverse" if reverse else "forward"] = {
            "loss_max_rel_error": ((loss.double() - ref_loss).abs().max() / ref_loss.abs().max()).item(),
            "grad_max_error": (grad.double() - ref_grad).abs().max().item()}
    return out
