"""What every exercise check shares: the error a learner sees, the pass line, the parts a check is
graded in, and the guard that stops a solution from calling the routine the exercise is about."""
from __future__ import annotations

import inspect
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
    """The code objects of functions, of classes' methods, and of every function and method defined
    in modules and their submodules. Decorated functions count by their innermost function only (a
    decorator's wrapper, such as ``torch.no_grad``'s, is shared with code a solution may use)."""
    codes, classes = set(), set()

    def add(f):
        f = inspect.unwrap(getattr(f, "__func__", f))
        if isinstance(f, type):
            if f in classes:  # classes can refer to each other (an autograd Function and its backward class)
                return
            classes.add(f)
            for member in vars(f).values():
                add(member)
        elif isinstance(f, property):
            add(f.fget)
        elif hasattr(f, "__code__"):
            codes.add(f.__code__)

    for thing in things:
        if not isinstance(thing, types.ModuleType):
            add(thing)
            continue
        prefix = thing.__name__ + "."
        for module in [m for name, m in list(sys.modules.items()) if name == thing.__name__ or name.startswith(prefix)]:
            for obj in vars(module).values():
                if getattr(obj, "__module__", None) == module.__name__ and (isinstance(obj, type) or callable(obj)):
                    add(obj)
    return codes


class Forbidden(NamedTuple):
    """What a solution may not call: Python functions (or whole modules, submodules included) and
    torch operations; ``reductions`` are torch operations refused only in their reducing form (one
    tensor, or a ``dim``), so that the elementwise ``torch.max(a, b)`` stays allowed."""
    what: str  # e.g. "kdlab's KL losses or torch's kl_div"
    python: tuple = ()  # functions, classes or modules, matched by code object however they were imported
    torch_ops: tuple = ()  # torch functions and Tensor methods, matched through TorchFunctionMode
    reductions: tuple = ()


def _reduces(func, args, kwargs) -> bool:
    """``torch.max(x)``, ``x.max()``, ``torch.max(x, dim)``: yes; ``torch.max(a, b)``, ``a.max(b)``: no."""
    other = args[1] if len(args) > 1 else kwargs.get("other")
    return not isinstance(other, torch.Tensor)


class _Recorder(TorchFunctionMode):
    def __init__(self, forbidden: Forbidden, seen):
        super().__init__()
        self.ops, self.reductions, self.seen = set(forbidden.torch_ops), set(forbidden.reductions), seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.ops or (func in self.reductions and _reduces(func, args, kwargs or {})):
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
        with _Recorder(forbidden, seen):
            yield seen
    finally:
        sys.setprofile(previous)


def guarded(fn: Callable, forbidden: Forbidden) -> Callable:
    """``fn`` that raises :class:`ExerciseError` after it calls anything in ``forbidden``."""
    def call(*args, **kwargs):
        def refuse():
            return ExerciseError(f"your function calls {seen[0]}: this exercise asks you to write that computation "
                                 f"yourself, without {forbidden.what}. Graded parts that call it score 0.")

        with recording(forbidden) as seen:
            try:
                out = fn(*args, **kwargs)
            except Exception as e:  # a solution that fails after delegating: the delegation is the news
                if seen:
                    raise refuse() from e
                raise
        if seen:
            raise refuse()
        return out
    return call


def run_parts(fn: Callable, parts: dict[str, Part], part: str | None, hidden: bool, forbidden: Forbidden,
              name: str) -> None:
    """Run one part (or all), printing a line per passed part. Calls to ``forbidden`` are refused in
    both variants (so a learner sees it before grading does); ``hidden``, the graders' variant, runs
    on other inputs (seed 1)."""
    if not callable(fn):
        raise ExerciseError(f"expected your function, got {type(fn).__name__}")
    if part is not None and part not in parts:
        raise ValueError(f"{name} has parts {', '.join(parts)}; got part={part!r}")
    for key in [part] if part is not None else list(parts):
        title, check = parts[key]
        n = check(guarded(fn, forbidden), 1 if hidden else 0)
        print(f"✓ {name}, {title}: {'hidden checks' if hidden else f'all {n} checks'} pass")


def sgd(module: torch.nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    """Plain SGD: after one step, weights differ from a reference exactly where the gradients do."""
    return torch.optim.SGD(module.parameters(), lr=lr)


def same_weights(a: torch.nn.Module, b: torch.nn.Module, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    """Same parameters (not buffers: a step that runs a BatchNorm model twice updates its running
    statistics twice, which is not what these checks grade)."""
    return all(close(p, q, rtol, atol) for p, q in zip(a.parameters(), b.parameters()))
