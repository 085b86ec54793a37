"""Assignment 07: the log-sum-exp of the fused KL kernel, in two passes and in one.

    def kernel_logsumexp(x) -> [...]   # pass 1: the row maximum m; pass 2: m + log sum_k exp(x_k - m)
    def online_logsumexp(x) -> [...]   # one pass: a running maximum and a rescaled running sum

``x`` ``[..., K]``; both reduce the last axis and must stay finite for logits of +-1000. Checked
against ``torch.logsumexp`` in float64. The graders' hidden checks refuse torch's log-sum-exp and
softmax functions, and for the one-pass version any full-row maximum.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .. import kernels, losses
from .core import ExerciseError, Forbidden, Part, close, run_parts, tensor

_LSE_OPS = (torch.logsumexp, torch.Tensor.logsumexp, torch.special.logsumexp, torch.log_softmax, torch.Tensor.log_softmax,
            F.log_softmax, torch.softmax, torch.Tensor.softmax, F.softmax, torch.special.log_softmax, torch.special.softmax)
TWO_PASS = Forbidden("torch's log-sum-exp or softmax", python=(kernels, losses), torch_ops=_LSE_OPS)
ONE_PASS = Forbidden("torch's log-sum-exp or softmax, or a maximum over the whole row (the one-pass version "
                     "keeps a running maximum)", python=(kernels, losses),
                     torch_ops=_LSE_OPS + (torch.max, torch.Tensor.max, torch.amax, torch.Tensor.amax, torch.sort,
                                           torch.Tensor.sort, torch.cummax, torch.Tensor.cummax))


def _rows(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 37 if seed == 0 else 23, generator=g, dtype=torch.float64) * 5


def _values(fn, seed: int) -> int:
    x = _rows(seed)
    out = tensor(fn(x))
    ref = torch.logsumexp(x, -1)
    if out.shape != ref.shape:
        raise ExerciseError(f"expected one value per row, shape {list(ref.shape)}; got {list(out.shape)}")
    if close(out, x.max(-1).values):
        raise ExerciseError("this is only the maximum m: add log(l), the log of the sum of exp(x_k - m)")
    if not close(out, ref, rtol=1e-9, atol=1e-9):
        raise ExerciseError("the values differ from log sum_k exp(x_k): with the maximum m, it is "
                            "m + log sum_k exp(x_k - m) (a running maximum must rescale the running sum by exp(m - m'))")
    return 2


def _stable(fn, seed: int) -> int:
    big = torch.tensor([[1000.0, -1000.0, 999.0], [-1000.0, -1001.0, -999.5]], dtype=torch.float64)
    big = big if seed == 0 else big.flip(-1)
    out = tensor(fn(big))
    if not torch.isfinite(out).all():
        raise ExerciseError("logits of +-1000 give inf or nan: subtract the (running) maximum inside exp(...), never "
                            "exponentiate a raw logit")
    if not close(out, torch.logsumexp(big, -1), rtol=1e-9, atol=1e-9):
        raise ExerciseError("logits of +-1000 give a wrong value: check the rescaling when the maximum changes")
    return 2


PARTS = {"values": Part("log-sum-exp of each row", _values), "stable": Part("finite for logits of +-1000", _stable)}


def check_kernel_logsumexp(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check the two-pass ``kernel_logsumexp`` (parts ``values``, ``stable``); ``hidden``: the graders' variant."""
    run_parts(fn, PARTS, part, hidden, TWO_PASS, "kernel_logsumexp")


def check_online_logsumexp(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check the one-pass ``online_logsumexp`` (parts ``values``, ``stable``); ``hidden``: the graders' variant."""
    run_parts(fn, PARTS, part, hidden, ONE_PASS, "online_logsumexp")
