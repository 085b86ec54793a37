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
            F.log_softmax, torch.softmax, torch.Tensor.softmax, F.softmax, torch.special.log_softmax, torch.special.softmax,
            torch.logcumsumexp, torch.Tensor.logcumsumexp, torch.logaddexp, torch.Tensor.logaddexp)
_ROW_MAX = (torch.amax, torch.Tensor.amax, torch.argmax, torch.Tensor.argmax, torch.topk, torch.Tensor.topk, torch.kthvalue,
            torch.Tensor.kthvalue, torch.sort, torch.Tensor.sort, torch.cummax, torch.Tensor.cummax, torch.aminmax,
            torch.Tensor.aminmax)
TWO_PASS = Forbidden("torch's log-sum-exp, softmax or logaddexp", python=(kernels, losses), torch_ops=_LSE_OPS)
ONE_PASS = Forbidden("torch's log-sum-exp, softmax or logaddexp, or a maximum over the whole row (the one-pass "
                     "version keeps a running maximum; the elementwise torch.maximum(a, b) is fine)",
                     python=(kernels, losses), torch_ops=_LSE_OPS + _ROW_MAX, reductions=(torch.max, torch.Tensor.max))


def _rows(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 37 if seed == 0 else 23, generator=g, dtype=torch.float64) * 5


def _same_dtype(out: torch.Tensor, x: torch.Tensor) -> None:
    if out.dtype != x.dtype:
        raise ExerciseError(f"the result is {out.dtype} for {x.dtype} logits: compute in the input's dtype (these checks "
                            "compare to 1e-9, which float32 cannot reach)")


def _values(fn, seed: int) -> int:
    x = _rows(seed)
    out = tensor(fn(x))
    _same_dtype(out, x)
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
    rows = [[1000.0, -1000.0, 999.0], [-1000.0, -1001.0, -999.5]] if seed == 0 else \
        [[-998.0, 1000.0, -1000.0, 1000.0], [-1003.0, -1000.5, -1001.0, -999.0]]  # the maximum comes late
    big = torch.tensor(rows, dtype=torch.float64)
    out = tensor(fn(big))
    _same_dtype(out, big)
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
