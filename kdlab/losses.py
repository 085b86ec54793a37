"""Distillation losses.

Output distillation (notebook 02): teacher and student receive the same noise ``z``; the student
regresses the teacher's image, ``L = mean_i (S(z)_i - T(z)_i)^2`` (or ``|.|``), optionally plus a
weighted adversarial term (Aguinaldo et al. 2019).

KL distillation (notebook 03): per-position categorical distributions given by logits with the
class axis at dim 1, softened by a temperature ``T`` (Hinton et al. 2015, arXiv 1503.02531):

    p = softmax(z_T / T),  q = softmax(z_S / T)
    forward:  KL(p || q) = sum_k p_k (log p_k - log q_k)      (mode covering)
    reverse:  KL(q || p) = sum_k q_k (log q_k - log p_k)      (mode seeking)
    loss = T^2 * KL,   since d KL(p || q) / d z_S = (q - p) / T, and q - p itself is O(1 / T) for
                       large T (both approach uniform): the gradient shrinks as 1 / T^2.

:func:`kl_distillation` here is the formula in plain PyTorch (autograd does the backward);
:func:`kdlab.kernels.kl_distillation` computes the same loss with a fused CUDA kernel where one is
built and falls back to this function everywhere else. Training steps call that one.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from .utils import check_choice

DIRECTIONS = ("forward", "reverse")
REDUCTIONS = ("mean", "sum", "none")
OUTPUT_LOSSES = ("mse", "l1")


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"{what}: student and teacher shapes differ: student {list(student.shape)}, "
                         f"teacher {list(teacher.shape)}")


def check_kl_arguments(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature, direction: str,
                       reduction: str) -> float:
    """The argument checks of :func:`kl_distillation` (``ValueError`` naming what is wrong); returns
    the temperature as a float."""
    _check_pair(student_logits, teacher_logits, "kl_distillation")
    if student_logits.dim() < 2 or student_logits.shape[1] < 2:
        raise ValueError(f"kl_distillation: expected logits [N, K, *spatial] with K >= 2 classes on dim 1, "
                         f"got shape {list(student_logits.shape)}")
    check_choice("direction", direction, DIRECTIONS)
    check_choice("reduction", reduction, REDUCTIONS)
    return check_temperature(temperature)


def check_temperature(temperature) -> float:
    """``temperature`` as a float, or ``ValueError`` unless it is a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 < temperature < math.inf:
        raise ValueError(f"kl_distillation: temperature={temperature!r} is not valid; expected a finite number > 0")
    return float(temperature)


def kl_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                    direction: str = "forward", reduction: str = "mean") -> torch.Tensor:
    """Temperature-scaled KL divergence between teacher and student categorical distributions.

    Args:
        student_logits, teacher_logits: ``[N, K]`` or ``[N, K, *spatial]``, class axis 1, K >= 2;
            float32, float16 or bfloat16 (computed in float32; float64 is computed in float64).
        temperature: T > 0; both distributions are ``softmax(logits / T)`` and the KL is multiplied
            by ``T**2``.
        direction: ``"forward"`` = KL(p_teacher || p_student), ``"reverse"`` = KL(p_student || p_teacher).
        reduction: ``"mean"`` over all N * prod(spatial) positions, ``"sum"``, or ``"none"``
            (shape ``[N, *spatial]``).

    Returns: a float32 (or float64) tensor, in nats times T^2.
    """
    temperature = check_kl_arguments(student_logits, teacher_logits, temperature, direction, reduction)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # float32 (float64 stays float64)
    log_q = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)  # student, log-sum-exp stable
    log_p = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=1)  # teacher
    a, b = (log_p, log_q) if direction == "forward" else (log_q, log_p)  # KL(A || B) = sum_k A_k (log A_k - log B_k)
    pa = a.exp()
    # (N, *spatial); 0 log 0 = 0, with the zero inside the product so no 0 * inf reaches the gradient either
    kl = (pa * torch.where(pa > 0, a - b, torch.zeros_like(pa))).sum(1)
    kl = kl * temperature ** 2
    if reduction == "mean":
        return kl.mean()
    if reduction == "sum":
        return kl.sum()
    return kl


def output_distillation(student_images: torch.Tensor, teacher_images: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Same-noise regression of the student's images ``[N, C, H, W]`` on the teacher's:
    ``mean (S - T)^2`` (``"mse"``) or ``mean |S - T|`` (``"l1"``). The teacher side is detached."""
    _check_pair(student_images, teacher_images, "output_distillation")
    check_choice("kind", kind, OUTPUT_LOSSES)
    target = teacher_images.detach()
    return F.mse_loss(student_images, target) if kind == "mse" else F.l1_loss(student_images, target)


def generator_adversarial(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``-mean log sigmoid(D(G(z)))`` from discriminator logits ``[N]``."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-mean log sigmoid(D(x)) - mean log(1 - sigmoid(D(G(z))))`` from logits ``[N]`` each."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def joint_distillation(student_images: torch.Tensor, teacher_images: torch.Tensor, fake_logits: torch.Tensor,
                       adversarial_weight: float = 0.01, kind: str = "mse") -> torch.Tensor:
    """Aguinaldo et al. 2019: ``output_distillation(S, T) + w * generator_adversarial(D(S))``; the
    adversarial term pushes the student off the blurry conditional mean that pure regression yields."""
    if adversarial_weight < 0:
        raise ValueError(f"adversarial_weight={adversarial_weight!r} is not valid; expected a value >= 0")
    return output_distillation(student_images, teacher_images, kind) + adversarial_weight * generator_adversarial(fake_logits)
