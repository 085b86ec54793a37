"""Small helpers shared by every notebook: device choice, seeding, smoke mode, run folders,
parameter validation and the machine-readable metrics file."""
from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 for reductions, unless it is already wider (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def data_root() -> Path:
    """Folder holding bundled data and checkpoints: ``$KDLAB_DATA`` if set, else ``<repo>/data``."""
    return Path(os.environ.get("KDLAB_DATA", REPO_ROOT / "data"))


def get_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, else Apple MPS, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
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
        from tqdm.std import tqdm

        kwargs.setdefault("mininterval", 10.0)  # keeps executed notebooks small
        kwargs.setdefault("ascii", True)
        return tqdm(iterable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


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


def check_ints(minimum: int = 1, **values: Any) -> None:
    """:func:`check_int` for several keyword parameters at once: ``check_ints(steps=steps, seed=seed)``."""
    for name, value in values.items():
        check_int(name, value, minimum)


def run_dir(notebook: str, out_dir: str | os.PathLike = "") -> Path:
    """Create and return the output folder of one notebook run.

    ``out_dir=""`` gives ``<runs>/<timestamp>-<host>-<pid>/<notebook>``, unique per process so
    concurrent runs never share a folder, where ``<runs>`` is ``$KDLAB_RUNS`` or ``<repo>/runs``; any
    other value is used as given.
    """
    if not out_dir:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        runs = Path(os.environ.get("KDLAB_RUNS", REPO_ROOT / "runs"))
        out_dir = runs / f"{stamp}-{socket.gethostname()}-{os.getpid()}" / notebook
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


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def to_json(obj: Any) -> str:
    """JSON text for nested dicts/lists of numbers, strings, tensors, NumPy scalars and paths."""
    return json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=True)


def write_metrics(out_dir: str | os.PathLike, metrics: dict, name: str = "metrics.json") -> Path:
    """Write a notebook's key numbers to ``<out_dir>/metrics.json`` (atomically) and return the path."""
    return atomic_write_bytes(Path(out_dir) / name, to_json(metrics).encode())
