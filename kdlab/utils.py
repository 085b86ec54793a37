"""Small helpers shared by every notebook: device choice, seeding, smoke mode, run folders,
parameter validation, progress bars and the machine-readable metrics file."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as text_tqdm

from .paths import runs_root

def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 for reductions, unless it is already wider (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class DeferredSignals:
    """While active, the first of ``signals`` (SIGINT: Ctrl-C, Jupyter's stop button) only sets ``requested``;
    the training loop checks it between steps. A second one raises ``KeyboardInterrupt`` at once (a step that
    hangs can still be stopped). Outside the main thread signals cannot be caught and this does
    nothing. The previous handlers are restored on exit, whatever they were. The trainer adds SIGTERM
    in a process group (torchrun passes a Ctrl-C on as SIGINT; schedulers stop jobs with SIGTERM). A handler,
    not a blocked signal: a signal is blocked for one thread only, and any other thread (Gloo's, PyTorch's)
    would take it, ending the process at once."""

    def __init__(self, signals=(signal.SIGINT,)):
        self.requested, self._signals, self._previous = False, signals, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            # None means a handler installed outside Python: the default is the closest we can restore
            signal.signal(sig, previous if previous is not None else
                          signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)


def launched() -> bool:
    """Whether ``torchrun`` started this process, even as the only one: it sets ``WORLD_SIZE`` and
    ``TORCHELASTIC_RUN_ID`` for its processes. (Cluster containers that export ``WORLD_SIZE=1`` and
    ``MASTER_ADDR`` themselves do not count: their notebooks stay plain processes.)"""
    return "WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ


def get_device(device: str | torch.device = "auto") -> torch.device:
    """The one device convention of kdlab: every ``device`` argument takes ``"auto"`` (CUDA, else
    Apple MPS, else CPU), a name such as ``"cpu"`` or ``"cuda:1"``, or a ``torch.device``. Under
    ``torchrun`` (one process or several), ``"auto"`` and ``"cuda"`` mean this process's GPU, ``LOCAL_RANK``."""
    if isinstance(device, torch.device):
        return device
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if device in ("auto", "cuda") and (several or launched()) and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'mps'") from e


def progress_bar(iterable, **kwargs):
    """A tqdm progress bar: ``tqdm.auto`` (a widget in Jupyter) unless ``KDLAB_PROGRESS=text`` asks
    for plain text (headless runs: ``make tutorial``, tests, papermill) or ``off`` disables it."""
    mode = os.environ.get("KDLAB_PROGRESS", "auto")
    check_choice("KDLAB_PROGRESS", mode, ("auto", "text", "off"))
    if mode == "off":
        kwargs["disable"] = True
    if mode == "text":
        kwargs.setdefault("mininterval", 10.0)  # keeps executed notebooks small
        kwargs.setdefault("ascii", True)
        return text_tqdm(iterable, **kwargs)
    return auto_tqdm(iterable, **kwargs)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so runs repeat exactly on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def smoke_mode(flag: bool = False) -> bool:
    """Smoke mode is on when the notebook parameter says so or ``KDLAB_SMOKE=1`` is set (nbval
    cannot inject parameters, so the environment variable gives it the same fast path)."""
    return bool(flag) or os.environ.get("KDLAB_SMOKE", "0") not in ("", "0", "false", "False")


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Raise ``ValueError`` naming the parameter, the value and the allowed values."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; allowed values: {', '.join(map(repr, allowed))}")
    return value


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """Raise ``ValueError`` unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} is not valid; expected an integer >= {minimum}")
    return int(value)


def check_parameters(**rules: tuple[Any, Any]) -> None:
    """Validate a notebook's parameters in one call: ``name=(value, rule)`` for each, where ``rule`` is

    - an integer ``m``: the value is an integer ``>= m``;
    - a list or tuple of allowed values: the value is one of them;
    - a type or a tuple of types: the value is an instance;
    - a function ``value -> bool`` (such as :func:`positive`): the value passes it (its docstring
      says what was expected);
    - ``None``: anything goes (documents the parameter).

    A value that is a list is checked item by item (``widths=([16, 8], 1)``), so a list parameter
    needs no loop. Raises ``ValueError`` naming the parameter, the value and what was expected.
    """
    for name, (value, rule) in rules.items():
        items = [(f"{name}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(name, value)]
        for label, item in items:
            if rule is None:
                continue
            if isinstance(rule, bool) or not (isinstance(rule, (int, list, tuple, type)) or callable(rule)):
                raise TypeError(f"check_parameters: rule for {name!r} must be an int, a list of choices, a type "
                                "or a function")
            if callable(rule) and not isinstance(rule, type):
                if not rule(item):
                    raise ValueError(f"{label}={item!r} is not valid; expected {(rule.__doc__ or rule.__name__).strip()}")
            elif isinstance(rule, int):
                check_int(label, item, rule)
            elif isinstance(rule, type) or (isinstance(rule, tuple) and all(isinstance(r, type) for r in rule)):
                if not isinstance(item, rule):
                    raise ValueError(f"{label}={item!r} is not valid; expected {getattr(rule, '__name__', rule)}")
            else:
                check_choice(label, item, rule)


def positive(value: Any) -> bool:
    """a finite number > 0"""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and 0 < value < float("inf")


def non_negative(value: Any) -> bool:
    """a finite number >= 0"""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and 0 <= value < float("inf")


def decay(value: Any) -> bool:
    """a number with 0 <= value < 1 (an averaging decay)"""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and 0 <= value < 1


def run_dir(notebook: str, out_dir: str | os.PathLike = "") -> Path:
    """Create and return the output folder of one notebook run (checkpoints, training states,
    figures, ``metrics.json``).

    ``out_dir=""`` gives ``<runs>/<name>/<notebook>``, where ``<runs>`` is :func:`kdlab.paths.runs_root`
    and ``<name>`` is

    - the environment variable ``KDLAB_RUN_NAME`` when it is set (one folder name, e.g. ``mine``):
      every run with that name uses the same folder, so a rerun loads the training states it finds
      there (finished training is not repeated, interrupted training resumes) and overwrites the
      figures and ``metrics.json`` instead of adding a folder;
    - otherwise ``<timestamp>-<host>-<pid>``: a new folder for every run, unique per process so
      concurrent runs never share one (a default run of one notebook writes 3 to 25 MB; old
      folders can be deleted).

    Any other ``out_dir`` is used as given (a relative one from the current folder: in Jupyter, the
    notebook's folder).
    """
    if not out_dir:
        name = os.environ.get("KDLAB_RUN_NAME", "").strip()
        if name in (".", "..") or "/" in name or os.sep in name:
            raise ValueError(f"KDLAB_RUN_NAME={name!r} is not valid; expected one folder name such as 'mine' "
                             f"(the run goes to {runs_root()}/<name>/{notebook})")
        name = name or f"{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}-{os.getpid()}"
        out_dir = runs_root() / name / notebook
    path = Path(out_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def to_json(obj: Any) -> str:
    """JSON text for nested dicts/lists of numbers, strings, tensors, NumPy scalars and paths."""
    return json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=True)


def write_metrics(out_dir: str | os.PathLike, metrics: dict, name: str = "metrics.json") -> Path:
    """Write a notebook's key numbers to ``<out_dir>/metrics.json`` (atomically) and return the path."""
    return atomic_write_bytes(Path(out_dir) / name, to_json(metrics).encode())


def max_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between ``a`` and ``b``: tensors, numbers, modules (their state
    dicts, compared by name) or lists / dicts of these; ``0.0`` means bit-for-bit identical. Raises
    ``ValueError`` when the structures differ (other names, lengths or shapes)."""
    if isinstance(a, torch.nn.Module) and isinstance(b, torch.nn.Module):
        return max_difference(a.state_dict(), b.state_dict())
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            raise ValueError(f"max_difference: different names {sorted(set(a) ^ set(b))[:5]}")
        return max((max_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            raise ValueError(f"max_difference: lengths differ ({len(a)} vs {len(b)})")
        return max((max_difference(x, y) for x, y in zip(a, b)), default=0.0)
    ta, tb = torch.as_tensor(a).detach().cpu(), torch.as_tensor(b).detach().cpu()
    if ta.shape != tb.shape:
        raise ValueError(f"max_difference: shapes differ ({list(ta.shape)} vs {list(tb.shape)})")
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype != b.dtype:
        raise ValueError(f"max_difference: dtypes differ ({a.dtype} vs {b.dtype}); compare like with like")
    if ta.numel() == 0:
        return 0.0
    if not ta.is_floating_point() and not tb.is_floating_point():
        return float((ta.long() - tb.long()).abs().max())
    return float((ta.double() - tb.double()).abs().max())


def timed(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), wall-clock seconds)``; queued CUDA or Apple MPS work is waited for
    before the clock stops."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.synchronize()
    return result, time.perf_counter() - start
