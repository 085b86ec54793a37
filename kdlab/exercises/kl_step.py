"""Assignment 03: the temperature-scaled KL distillation step of a PixelCNN student.

    def my_kl_step(student, x, teacher_logits, opt, T=1.0, direction="forward") -> float

``student(x)`` gives logits ``[B, K, H, W]``; the loss is ``T^2`` times the per-pixel KL between
``softmax(logits / T)`` distributions, averaged over pixels and images ("forward": KL(teacher ||
student), "reverse": KL(student || teacher)); one optimiser step; returns the loss before the step.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import torch.distributions.kl

from .. import bench, kernels, kl, losses
from ..methods import pixelcnn
from .core import ExerciseError, Forbidden, Part, close, number, run_parts

FORBIDDEN = Forbidden("kdlab's KL losses or torch's KL routines (kl_div, torch.distributions.kl)",
                      python=(losses, kl, kernels, bench, pixelcnn.kl_step, torch.distributions.kl),
                      torch_ops=(F.kl_div, torch.kl_div))


class FixedLogits(nn.Module):
    """A "student" whose logits are its only parameter, ``[B, K, H, W]``: after one SGD step with
    learning rate 1 the parameter has moved by minus the loss's gradient."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def loss_and_gradient(fn, s: torch.Tensor, t: torch.Tensor, T: float, direction: str) -> tuple[float, torch.Tensor]:
    """Run the learner's step once on fixed logits; returns its loss and the gradient it applied."""
    student = FixedLogits(s)
    t_before = t.clone()
    loss = number(fn(student, torch.zeros(len(s), 1, *s.shape[2:], dtype=torch.long), t,
                     torch.optim.SGD(student.parameters(), lr=1.0), T, direction), "my_kl_step")
    if not torch.equal(t, t_before):
        raise ExerciseError("the teacher's logits changed: treat them as a fixed target")
    return loss, (s - student.logits.detach())


def _ref(s, t, T, direction):
    s = s.detach().clone().requires_grad_(True)
    loss = losses.kl_distillation(s, t, T, direction)
    (grad,) = torch.autograd.grad(loss, s)
    return loss.item(), grad


def _logits(seed: int):
    g = torch.Generator().manual_seed(seed)
    shape = (3, 6, 2, 3) if seed else (2, 5, 3, 3)  # [B, K, H, W]
    return (2 * torch.randn(shape, generator=g, dtype=torch.float64), 2 * torch.randn(shape, generator=g, dtype=torch.float64))


def _compare(fn, s, t, T, direction, what):
    loss, grad = loss_and_gradient(fn, s, t, T, direction)
    ref_loss, ref_grad = _ref(s, t, T, direction)
    if not torch.isfinite(torch.tensor(loss)) or not torch.isfinite(grad).all():
        raise ExerciseError(f"{what}: inf or nan; compute log-probabilities with log_softmax (log-sum-exp), "
                            "not log(softmax(...))")
    if abs(loss - ref_loss) > 1e-4 * abs(ref_loss) + 1e-6:
        return loss, grad, False
    if grad.abs().max() == 0:
        raise ExerciseError(f"{what}: the loss is right but the student did not move: call opt.zero_grad(), "
                            "loss.backward() and opt.step()")
    if not close(grad, ref_grad):
        raise ExerciseError(f"{what}: the loss is right but its gradient is not: keep the student's side in "
                            "differentiable torch operations (no .item(), .detach() or torch.tensor(...) on it) and "
                            "take one optimiser step")
    return loss, grad, True


def _forward(fn, seed: int) -> int:
    s, t = _logits(seed)
    loss, _, ok = _compare(fn, s, t, 1.0, "forward", "forward KL at T = 1")
    if ok:
        return 3
    if abs(loss - _ref(s, t, 1.0, "reverse")[0]) < 1e-6:
        raise ExerciseError("this is KL(student || teacher); direction='forward' is KL(teacher || student) = "
                            "sum_k p_k (log p_k - log q_k) with p the teacher's softmax")
    if abs(loss - _ref(s, t, 1.0, "forward")[0] * s[:, 0].numel()) < 1e-6:
        raise ExerciseError("you summed the per-pixel KL; average it over pixels and images")
    if abs(loss - _ref(s.movedim(-1, 1), t.movedim(-1, 1), 1.0, "forward")[0]) < 1e-6:
        raise ExerciseError("softmax over the wrong axis: the classes of [B, K, H, W] logits are on dim 1")
    raise ExerciseError("at T = 1 your loss differs from the mean over pixels of KL(p || q) = sum_k p_k (log p_k - "
                        "log q_k), p = softmax(teacher_logits), q = softmax(student(x)), softmax over dim 1")


def _reverse(fn, seed: int) -> int:
    s, t = _logits(seed)
    loss, _, ok = _compare(fn, s, t, 1.0, "reverse", "reverse KL at T = 1")
    if ok:
        return 2
    if abs(loss - _ref(s, t, 1.0, "forward")[0]) < 1e-6:
        raise ExerciseError("direction='reverse' gives the forward KL: it must be KL(student || teacher) = "
                            "sum_k q_k (log q_k - log p_k)")
    raise ExerciseError("direction='reverse' must give KL(q || p) = sum_k q_k (log q_k - log p_k), averaged over pixels")


def _temperature(fn, seed: int) -> int:
    s, t = _logits(seed)
    T, direction = (4.0 if seed == 0 else 3.0), "forward"  # the reverse direction is graded on its own
    loss, _, ok = _compare(fn, s, t, T, direction, f"{direction} KL at T = {T:g}")
    if not ok:
        ref = _ref(s, t, T, direction)[0]
        if abs(loss - ref / T ** 2) < 1e-6 * max(1, abs(ref)):
            raise ExerciseError("off by a factor T^2: multiply the KL by T ** 2 so its gradient keeps its size as "
                                "T grows")
        if abs(loss - _ref(s, t, 1.0, direction)[0] * T ** 2) < 1e-6 * max(1, abs(ref)):
            raise ExerciseError("the temperature must soften both distributions: softmax(logits / T) for the "
                                "student and the teacher")
        raise ExerciseError(f"at T = {T:g} your loss differs: both softmaxes take logits / T and the mean KL is "
                            "multiplied by T^2")
    return 2


def _stable(fn, seed: int) -> int:
    s, t = _logits(seed)
    s[0, 0], s[0, 1], t[0, 1], t[0, 2] = 1000.0, -1000.0, 1000.0, -1000.0  # one softmax's mass on a single class
    loss, grad = loss_and_gradient(fn, s, t, 1.0, "forward")
    if not (torch.isfinite(torch.tensor(loss)) and torch.isfinite(grad).all()):
        raise ExerciseError("logits of +-1000 give inf or nan: compute log-probabilities with log_softmax (a "
                            "log-sum-exp) rather than log(softmax(...))")
    ref_loss, ref_grad = _ref(s, t, 1.0, "forward")
    if abs(loss - ref_loss) > 1e-3 * abs(ref_loss) or not close(grad, ref_grad, rtol=1e-3, atol=1e-5):
        raise ExerciseError("logits of +-1000 give a wrong value: compute log-probabilities with log_softmax")
    return 2


PARTS = {
    "forward": Part("forward KL at T = 1, and the optimiser step", _forward),
    "reverse": Part("reverse KL", _reverse),
    "temperature": Part("temperature inside both softmaxes, times T^2", _temperature),
    "stable": Part("finite for logits of +-1000", _stable),
}


def check_kl_step(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check ``my_kl_step`` (see the module docstring): one part, or all with ``part=None``; ``hidden``
    is the graders' variant (other inputs; calling kdlab's KL or ``kl_div`` scores 0)."""
    run_parts(fn, PARTS, part, hidden, FORBIDDEN, "my_kl_step")


def gradient_norms(fn, temperatures=(1.0, 2.0, 4.0, 8.0), seed: int = 0) -> list[float]:
    """The size of the gradient the learner's step applies to one row of logits at each temperature."""
    g = torch.Generator().manual_seed(seed)
    s, t = (3 * torch.randn(1, 10, 1, 1, generator=g, dtype=torch.float64) for _ in range(2))
    return [loss_and_gradient(fn, s, t, T, "forward")[1].norm().item() for T in temperatures]
