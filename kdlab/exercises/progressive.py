"""Assignment 06: progressive distillation's target and step.

    def my_two_step_target(teacher, z, t, N) -> (x_tilde, z_t'')   # teacher: t -> t - 1/(2N) -> t - 1/N
    def my_progressive_step(student, teacher, x, t, eps, opt, N) -> float

``x_tilde`` is the prediction with which one DDIM step from ``z_t`` lands on the teacher's ``z_t''``.
Checked against the defining property (one step with ``x_tilde`` lands on ``z_t''``) and against
:mod:`kdlab.methods.diffusion`, in float64 with a small U-Net teacher; the step with plain SGD.
"""
from __future__ import annotations

import copy

import torch

from ..methods import diffusion as dm
from ..models import UNet
from .core import ExerciseError, Forbidden, Part, close, number, run_parts, same_weights, sgd, tensor

FORBIDDEN = Forbidden("kdlab's progressive-distillation target and step",
                      python=(dm.two_step_target, dm.progressive_step, dm.distill_round))


def _setup(seed: int):
    torch.manual_seed(70 + seed)
    teacher = UNet(widths=(4, 8, 8), emb_dim=8).double().eval()
    g = torch.Generator().manual_seed(seed)
    N = 4 if seed == 0 else 8
    t = torch.randint(1, N + 1, (3,), generator=g).double() / N  # times on the student's grid, (B,)
    t[0] = 1 / N  # the last step, which ends at t'' = 0 (sigma = 0)
    z = torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64)
    return teacher, z, t, N


def _target(fn, z, teacher, t, N):
    out = fn(teacher, z, t, N)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ExerciseError("return the pair (x_tilde, z_t'')")
    return tensor(out[0], "x_tilde"), tensor(out[1], "z_t''")


def _teacher_steps(fn, seed: int) -> int:
    teacher, z, t, N = _setup(seed)
    _, z2 = _target(fn, z, teacher, t, N)
    _, ref_z2 = dm.two_step_target(teacher, z, t, N)
    if z2.shape != z.shape:
        raise ExerciseError(f"z_t'' must have the images' shape {list(z.shape)}, got {list(z2.shape)}")
    if not close(z2, ref_z2, 1e-6, 1e-9):
        z1 = dm.ddim_step(z, t, t - 1 / N, dm.predict_x(teacher, z, t))
        if close(z2, z1, 1e-6, 1e-9):
            raise ExerciseError("z_t'' is where one DDIM step of 1/N from z_t lands: the teacher takes two steps of "
                                "1/(2N), the second with its own x prediction at t' (dm.predict_x(teacher, z_t', t'))")
        raise ExerciseError("z_t'' differs from the teacher's two DDIM steps t -> t - 1/(2N) -> t - 1/N, each with "
                            "the teacher's x prediction at its own start (dm.predict_x)")
    return 2


def _x_tilde(fn, seed: int) -> int:
    teacher, z, t, N = _setup(seed)
    x_tilde, _ = _target(fn, z, teacher, t, N)
    _, ref_z2 = dm.two_step_target(teacher, z, t, N)
    if x_tilde.shape != z.shape:
        raise ExerciseError(f"x_tilde must have the images' shape {list(z.shape)}, got {list(x_tilde.shape)}")
    if not torch.isfinite(x_tilde).all():
        raise ExerciseError("inf or nan in x_tilde: sigma_t'' is 0 at the last step (t'' = 0), so divide by sigma_t "
                            "(> 0 for t > 0), never by sigma_t'': is the ratio inverted, or the denominator wrong?")
    if close(x_tilde, ref_z2, 1e-6, 1e-9):
        raise ExerciseError("x_tilde is not the teacher's z_t'' itself: solve the DDIM step from z_t for its x")
    landed = dm.ddim_step(z, t, t - 1 / N, x_tilde.double())
    if not close(landed, ref_z2, 1e-6, 1e-8):
        (a_t, s_t), (a_2, s_2) = [[v.view(-1, 1, 1, 1) for v in dm.alpha_sigma(u)] for u in (t, t - 1 / N)]
        if close(x_tilde, (ref_z2 - s_t / s_2 * z) / (a_2 - s_t / s_2 * a_t), 1e-6, 1e-9):
            raise ExerciseError("the ratio is inverted: it is sigma_t'' / sigma_t (the noise left after the step)")
        if close(x_tilde, ref_z2 - s_2 / s_t * z, 1e-6, 1e-9):
            raise ExerciseError("divide by (alpha_t'' - (sigma_t'' / sigma_t) alpha_t) to solve the step for x")
        raise ExerciseError("one DDIM step from z_t with your x_tilde does not land on z_t'': write the step "
                            "z_t'' = alpha_t'' x + sigma_t'' (z_t - alpha_t x) / sigma_t and solve it for x")
    return 3


def _step(fn, seed: int) -> int:
    teacher, z, t, N = _setup(seed)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.tanh(torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64))
    eps = torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    start, t_before = copy.deepcopy(student), copy.deepcopy(teacher)
    loss = number(fn(student, teacher, x, t, eps, sgd(student, 0.01), N), "my_progressive_step")
    if not same_weights(teacher, t_before, 0, 0):
        raise ExerciseError("the teacher changed: it is frozen; only the student's optimiser steps")
    ref_student = copy.deepcopy(start)
    ref = dm.progressive_step(ref_student, teacher, x, t, eps, sgd(ref_student, 0.01), N)["loss"].item()
    if same_weights(student, start, 0, 0):
        raise ExerciseError("the student did not move: opt.zero_grad(), loss.backward(), opt.step()")
    if abs(loss - ref) > 1e-6 * ref:
        with torch.no_grad():
            z_t = dm.diffuse(x, t, eps)
            x_tilde, _ = dm.two_step_target(teacher, z_t, t, N)
            x_space = (dm.predict_x(copy.deepcopy(start), z_t, t, clip=False) - x_tilde).pow(2).mean().item()
            v_plain = (copy.deepcopy(start)(z_t, t) - dm.v_target(x, t, eps)).pow(2).mean().item()
        if abs(loss - x_space) < 1e-6 * x_space:
            raise ExerciseError("this regresses x; the student predicts v, so regress v_tilde = v_from_x(z_t, t, x_tilde)")
        if abs(loss - v_plain) < 1e-6 * v_plain:
            raise ExerciseError("this is the ordinary diffusion loss on the data's v: the target is the teacher's "
                                "two-step v_tilde")
        raise ExerciseError(f"the loss {loss:.6f} differs from mean (v_student(z_t, t) - v_tilde)^2 = {ref:.6f}, with "
                            "z_t = alpha_t x + sigma_t eps and v_tilde from the two-step target")
    if not same_weights(student, ref_student, 1e-5, 1e-9):
        raise ExerciseError("the loss is right but the student's update is not: one opt step on it, the target "
                            "computed without gradients")
    return 4


TARGET_PARTS = {"teacher_steps": Part("the teacher's two DDIM steps", _teacher_steps),
                "x_tilde": Part("the target x_tilde lands on z_t'' in one step", _x_tilde)}
STEP_PARTS = {"step": Part("the progressive-distillation step (v regression)", _step)}


def check_two_step_target(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check ``my_two_step_target`` (parts ``teacher_steps``, ``x_tilde``); ``hidden``: the graders' variant."""
    run_parts(fn, TARGET_PARTS, part, hidden, FORBIDDEN, "my_two_step_target")


def check_progressive_step(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check ``my_progressive_step`` (part ``step``); ``hidden``: the graders' variant."""
    run_parts(fn, STEP_PARTS, part, hidden, FORBIDDEN, "my_progressive_step")
