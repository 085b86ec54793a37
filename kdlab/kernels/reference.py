"""Pure-PyTorch reference implementations of the fused training kernels (float32 accumulation;
float64 stays float64). They return exactly what the CUDA kernels return, the loss per position
(or per sample) *and* the gradient with respect to the student (in the kernels' memory format:
:func:`kl_grad_format`), so the fallback and the kernels are interchangeable behind
:mod:`kdlab.kernels`. With ``reduction`` 1 (mean) or 2 (sum) the loss
is reduced and the gradient is that of the reduced loss, so the backward pass has nothing left
to compute when the upstream gradient is 1.

KL distillation over per-class logits ``[N, K, *spatial]`` (class axis 1), with
``q = softmax(s / T)`` (student) and ``p = softmax(t / T)`` (teacher):

    forward:  loss = T^2 sum_k p_k (log p_k - log q_k)      d loss / d s_k = T (q_k - p_k)
    reverse:  loss = T^2 sum_k q_k (log q_k - log p_k)      d loss / d s_k = T q_k (log q_k - log p_k - KL)
              (0 where q_k = 0, i.e. at a -inf student logit, rather than 0 * inf)

Attention transfer (Zagoruyko and Komodakis, arXiv 1612.03928) for features ``[N, C, H, W]``:
``a = mean_c |F|^p`` ``[N, H W]``, ``u = a_S / ||a_S||``, ``v = a_T / ||a_T||``, ``d = u - v``:

    loss_n = ||d||^2
    d loss / d a_S = 2 (d - u (u . d)) / ||a_S||
    d loss / d F_S[c, j] = (d loss / d a_S[j]) * (p / C_S) |F_S[c, j]|^(p-1) sign(F_S[c, j])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils import at_least_float32 as _acc


def _reduce(loss: torch.Tensor, grad: torch.Tensor, reduction: int, weight: float = 1.0,
            weight_tensor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """0: per position / sample; 1: mean (and the gradient scaled by 1 / count); 2: sum; then both times
    ``weight`` and ``weight_tensor`` (one value), as the kernels do."""
    if reduction == 1:
        loss, grad = loss.mean(), grad / max(loss.numel(), 1)
    elif reduction == 2:
        loss = loss.sum()
    w = weight if weight_tensor is None else weight * weight_tensor.reshape(()).to(loss.dtype)
    return (loss, grad) if weight_tensor is None and weight == 1.0 else (w * loss, w * grad)


def apply_upstream_(grad: torch.Tensor, factor: torch.Tensor) -> None:
    """The backward of the reduced ops: ``grad *= factor`` (one value) in place, unless it is 1. Written through
    ``.data``, as the CUDA and Triton kernels write through a pointer (the version counter does not move)."""
    f = factor.reshape(())
    if f.device.type != "cpu" or f.item() != 1.0:  # on a CPU the comparison waits for nothing
        grad.data.mul_(f.to(grad.dtype))


def kl_grad_format(student: torch.Tensor, teacher: torch.Tensor) -> torch.memory_format:
    """The memory format of the KL gradient, as the CUDA kernels write it: channels-last when both logits
    are 4-D channels-last (and not also plain contiguous: the class axis innermost, read without a copy),
    contiguous otherwise."""
    cl = torch.channels_last
    if student.dim() == 4 and not student.is_contiguous() and student.is_contiguous(memory_format=cl) \
            and teacher.is_contiguous(memory_format=cl):
        return cl
    return torch.contiguous_format


def kl_fused(student: torch.Tensor, teacher: torch.Tensor, temperature: float, reverse: bool, reduction: int = 0,
             weight: float = 1.0, weight_tensor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, grad)``: ``T^2 KL`` per position ``[N, *spatial]`` (float32, or float64), or its mean
    (``reduction=1``) or sum (``2``), times ``weight`` (and ``weight_tensor``'s one value), and the gradient
    of that loss with respect to ``student`` (in ``student.dtype``)."""
    log_q = F.log_softmax(_acc(student) / temperature, dim=1)
    log_p = F.log_softmax(_acc(teacher) / temperature, dim=1)
    q, p = log_q.exp(), log_p.exp()
    if reverse:
        kl = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(1, keepdim=True)  # (N, 1, *spatial)
        grad = torch.where(q > 0, temperature * q * (log_q - log_p - kl), torch.zeros_like(q))  # q = 0: a -inf logit
    else:
        kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(1, keepdim=True)
        grad = temperature * (q - p)
    loss, grad = _reduce((temperature ** 2) * kl.squeeze(1), grad, reduction, weight, weight_tensor)
    return loss, grad.to(student.dtype).contiguous(memory_format=kl_grad_format(student, teacher))


def attention_fused(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0, reduction: int = 0,
                    weight: float = 1.0, weight_tensor: torch.Tensor | None = None, eps: float = 1e-12
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, grad)``: attention transfer per sample ``[N]``, or its mean (``reduction=1``) or sum
    (``2``), times ``weight`` (and ``weight_tensor``'s one value), and the gradient of that loss with
    respect to the student features (``student.dtype``)."""
    fs, ft = _acc(student), _acc(teacher)
    a_s = fs.abs().pow(p).mean(1).flatten(1)  # (N, HW)
    a_t = ft.abs().pow(p).mean(1).flatten(1)
    n_s = a_s.norm(dim=1, keepdim=True).clamp_min(eps)  # (N, 1)
    u, v = a_s / n_s, a_t / a_t.norm(dim=1, keepdim=True).clamp_min(eps)
    d = u - v
    loss = d.pow(2).sum(1)  # (N,)
    g_a = 2 * (d - u * (u * d).sum(1, keepdim=True)) / n_s  # (N, HW)
    g_a = g_a.view(fs.shape[0], 1, *fs.shape[2:])
    dfs = (p / fs.shape[1]) * fs.abs().pow(p - 1) * fs.sign()
    loss, grad = _reduce(loss, g_a * dfs, reduction, weight, weight_tensor)
    return loss, grad.to(student.dtype).contiguous()
