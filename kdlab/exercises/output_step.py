"""Assignment 02: the same-noise output-distillation step.

    def my_distill_step(student, teacher, z, opt, kind="mse", real=None, D=None, opt_d=None, w=0.0) -> float

Teacher and student get the same noise ``z`` ``[B, noise_dim]``; the loss is ``mean (S(z) - T(z))^2``
(``"mse"``) or ``mean |S(z) - T(z)|`` (``"l1"``); with a discriminator ``D`` the step first trains
``D`` on ``real`` against ``S(z)`` and adds ``w * (-mean log sigmoid D(S(z)))``. Compared with
:func:`kdlab.methods.gan.distill_step` from the same weights, with plain SGD.
"""
from __future__ import annotations

import copy
import math

import torch
from torch.nn import functional as F

from .. import losses
from ..methods import gan
from ..models import Discriminator, Generator
from .core import ExerciseError, Forbidden, Part, number, run_parts, same_weights, sgd

FORBIDDEN = Forbidden("kdlab's distillation steps and losses", python=(gan, losses))


def _setup(seed: int):
    torch.manual_seed(30 + seed)
    teacher = Generator(z_dim=8, width=4).double().eval()
    torch.manual_seed(40 + seed)
    student = Generator(z_dim=8, width=2).double()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(6, 8, generator=g, dtype=torch.float64)
    real = torch.tanh(torch.randn(6, 1, 28, 28, generator=g, dtype=torch.float64))
    return teacher, student, z, real


def _frozen(teacher, before):
    if any(not torch.equal(a, b) for a, b in zip(before, [*teacher.parameters(), *teacher.buffers()])):
        raise ExerciseError("the teacher's weights or BatchNorm statistics changed: the teacher is frozen (keep it in "
                            "eval mode, compute T(z) without gradients); only the student's optimiser steps")


def _pixel_part(kind: str):
    def check(fn, seed: int) -> int:
        teacher, student, z, _ = _setup(seed)
        start, t_before = copy.deepcopy(student), [t.clone() for t in [*teacher.parameters(), *teacher.buffers()]]
        loss = number(fn(student, teacher, z, sgd(student), kind), "my_distill_step")
        _frozen(teacher, t_before)
        ref_student = copy.deepcopy(start)
        ref = gan.distill_step(ref_student, teacher, z, sgd(ref_student), kind)["loss"].item()
        if same_weights(student, start, 0, 0):
            raise ExerciseError("the student's weights did not change: opt.zero_grad(), loss.backward(), opt.step()")
        if abs(loss - ref) > 1e-6 * ref:
            if kind == "mse" and abs(loss - math.sqrt(ref)) < 1e-6:
                raise ExerciseError("this is the root of the mean squared error; use the mean of the squared differences")
            with torch.no_grad():
                other = copy.deepcopy(start)(z)
                l1 = (other - teacher(z)).abs().mean().item()
                mse = (other - teacher(z)).pow(2).mean().item()
            if abs(loss - (l1 if kind == "mse" else mse)) < 1e-6:
                raise ExerciseError(f"kind={kind!r} gives the {'L1' if kind == 'mse' else 'MSE'} loss: 'mse' is "
                                    "mean (S(z) - T(z))^2, 'l1' is mean |S(z) - T(z)|")
            raise ExerciseError(f"the loss {loss:.5f} is not the {kind.upper()} {ref:.5f} between the student's and the "
                                "teacher's images for the same z (the same noise goes to both)")
        if not same_weights(student, ref_student):
            raise ExerciseError("the loss is right but the student's update is not: one opt step on that loss")
        return 4
    return check


def _joint(fn, seed: int) -> int:
    teacher, student, z, real = _setup(seed)
    torch.manual_seed(50 + seed)
    D = Discriminator(width=2).double()
    start, d_start, w = copy.deepcopy(student), copy.deepcopy(D), 0.5
    loss = number(fn(student, teacher, z, sgd(student), "mse", real, D, sgd(D), w), "my_distill_step")
    ref_student, ref_d = copy.deepcopy(start), copy.deepcopy(d_start)
    adversary = gan.Adversary(ref_d, w, lr=0.1)
    adversary.opt = sgd(ref_d)
    ref = gan.distill_step(ref_student, teacher, z, sgd(ref_student), "mse", real, adversary)["loss"].item()
    if same_weights(D, d_start, 0, 0):
        raise ExerciseError("the discriminator did not move: first one step of L_D on real images against S(z) "
                            "(detached), with opt_d")
    if not same_weights(D, ref_d):
        raise ExerciseError("the discriminator's step differs: L_D = -mean log sigmoid(D(real)) - mean log(1 - "
                            "sigmoid(D(S(z)))) with S(z) detached, one opt_d step")
    if abs(loss - ref) > 1e-6 * ref:
        with torch.no_grad():
            fake = copy.deepcopy(start)(z)
            mse = (fake - teacher(z)).pow(2).mean().item()
            d_after = ref_d(fake)
            adv = F.binary_cross_entropy_with_logits(d_after, torch.ones_like(d_after)).item()
        if abs(loss - mse) < 1e-6:
            raise ExerciseError("the returned loss is the MSE alone: add w * (-mean log sigmoid(D(S(z))))")
        if abs(loss - (mse + adv)) < 1e-6:
            raise ExerciseError("the adversarial term is not weighted: L = L_MSE + w * L_adv")
        raise ExerciseError(f"the joint loss {loss:.5f} differs from L_MSE + w * (-mean log sigmoid(D(S(z)))) = {ref:.5f}, "
                            "with D after its step")
    if not same_weights(student, ref_student):
        raise ExerciseError("the joint loss is right but the student's update is not: one opt step on it")
    return 4


PARTS = {"mse": Part("same-noise MSE step, frozen teacher", _pixel_part("mse")),
         "l1": Part("same-noise L1 step", _pixel_part("l1")),
         "joint": Part("joint step with a discriminator", _joint)}


def check_distill_step(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check ``my_distill_step`` (parts ``mse``, ``l1``, ``joint``); ``hidden``: the graders' variant."""
    run_parts(fn, PARTS, part, hidden, FORBIDDEN, "my_distill_step")
