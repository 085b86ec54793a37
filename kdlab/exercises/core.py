"""What every exercise check shares: the error a learner sees, the pass line, the parts a check is
graded in, and the guard that stops a solution from calling the routine the exercise is about."""
from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from typing import Callable, Iterable, NamedTuple

import torch
from torch.overrides import TorchFunctionMode


class ExerciseError(AssertionError):
    """A check found a problem; the message says what to fix.

    In Jupyter only the message is shown (IPython calls ``_render_traceback_``): a traceback into the
    check's source would bury the hint and show the reference calls the check compares with."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mExerciseError\x1b[0m: {self}"]


class Part(NamedTuple):
    """One graded part of an exercise: ``check(fn, seed)`` raises :class:`ExerciseError` or returns
    the number of checks that passed."""
    title: str
    check: Callable[[Callable, int], int]


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Same shape and values within tolerance (compared in float64)."""
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol))


def tensor(out, what: str = "your function") -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise ExerciseError(f"{what} returned {type(out).__name__}; return a torch.Tensor")
    return out


def number(out, what: str = "your function") -> float:
    """A returned loss as a float: a Python number or a one-element tensor."""
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        return out.item()
    if isinstance(out, (int, float)):
        return float(out)
    raise ExerciseError(f"{what} must return the loss as a float (loss.item()), got {type(out).__name__}")


# ---------------------------------------------------------------- no delegation
def _codes(things: Iterable) -> set[types.CodeType]:
    """The code objects of functions, and of every function and method defined in modules."""
    codes = set()

    def add(f):
        f = getattr(f, "__func__", f)
        while hasattr(f, "__wrapped__"):
            codes.add(getattr(f, "__code__", None))
            f = f.__wrapped__
        codes.add(getattr(f, "__code__", None))

    for thing in things:
        if isinstance(thing, types.ModuleType):
            for obj in vars(thing).values():
                if getattr(obj, "__module__", None) != thing.__name__:
                    continue
                if isinstance(obj, type):
                    for member in vars(obj).values():
                        add(member)
                elif callable(obj):
                    add(obj)
        else:
            add(thing)
    codes.discard(None)
    return codes


class Forbidden(NamedTuple):
    """What a solution may not call: Python functions (or whole modules) and torch operations."""
    what: str  # e.g. "kdlab's KL losses or torch's kl_div"
    python: tuple = ()  # functions or modules, matched by code object however they were imported
    torch_ops: tuple = ()  # torch functions and Tensor methods, matched through TorchFunctionMode


class _Recorder(TorchFunctionMode):
    def __init__(self, ops, seen):
        super().__init__()
        self.ops, self.seen = ops, seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.ops:
            qualname = getattr(func, "__qualname__", "")
            owner = "Tensor" if "Tensor" in qualname.split(".")[0] else (getattr(func, "__module__", None) or "torch")
            self.seen.append(f"{owner}.{getattr(func, '__name__', repr(func))}")
        return func(*args, **(kwargs or {}))


@contextmanager
def recording(forbidden: Forbidden):
    """Record calls to ``forbidden`` made inside the block (a list of names, filled as they happen)."""
    seen: list[str] = []
    codes = _codes(forbidden.python)
    previous = sys.getprofile()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            seen.append(f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        with _Recorder(set(forbidden.torch_ops), seen):
            yield seen
    finally:
        sys.setprofile(previous)


def guarded(fn: Callable, forbidden: Forbidden) -> Callable:
    """``fn`` that raises :class:`ExerciseError` after it calls anything in ``forbidden``."""
    def call(*args, **kwargs):
        with recording(forbidden) as seen:
            out = fn(*args, **kwargs)
        if seen:
            raise ExerciseError(f"your function calls {seen[0]}: this exercise asks you to write that computation "
                                f"yourself, without {forbidden.what}. Graded parts that call it score 0.")
        return out
    return call


def run_parts(fn: Callable, parts: dict[str, Part], part: str | None, hidden: bool, forbidden: Forbidden,
              name: str) -> None:
    """Run one part (or all), printing a line per passed part. ``hidden``: the graders' variant, on
    other inputs (seed 1) and with ``forbidden`` calls refused."""
    if not callable(fn):
        raise ExerciseError(f"expected your function, got {type(fn).__name__}")
    if part is not None and part not in parts:
        raise ValueError(f"{name} has parts {', '.join(parts)}; got part={part!r}")
    for key in [part] if part is not None else list(parts):
        title, check = parts[key]
        n = check(guarded(fn, forbidden) if hidden else fn, 1 if hidden else 0)
        print(f"✓ {name}, {title}: {'hidden checks' if hidden else f'all {n} checks'} pass")


def sgd(module: torch.nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    """Plain SGD: after one step, weights differ from a reference exactly where the gradients do."""
    return torch.optim.SGD(module.parameters(), lr=lr)


def same_weights(a: torch.nn.Module, b: torch.nn.Module, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    return all(close(p, q, rtol, atol) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
