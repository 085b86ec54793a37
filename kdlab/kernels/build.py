"""Building the fused CUDA kernels on first use (``torch.utils.cpp_extension``, cached in PyTorch's
extensions folder), and the guard that decides whether to try.

The build is attempted only when ``KDLAB_KERNELS`` is not ``reference``, a CUDA device is visible,
PyTorch was built with CUDA, and both ``nvcc`` and ``ninja`` are found. It compiles for the compute
capability of every visible GPU (``-gencode`` flags, plus PTX of the newest for later GPUs), without
touching the process environment, into its own folder per build key (sources, architectures, PyTorch
and CUDA versions): two builds never share a folder, and a changed source is a new build.

PyTorch's builder guards a folder with its ``lock`` file and waits for it without limit. Recent
PyTorch (2.14 here) holds an operating-system lock on that file, which a killed builder releases;
older versions (2.11 on the GPU machine) create the file and wait while it exists, so a build killed
halfway leaves it behind and every later build waits for ever. Before building, :func:`wait_for_lock`
waits at most ``KDLAB_KERNELS_LOCK_WAIT`` seconds (default 300) for the lock, whichever kind, then gives
up with :class:`BuildLocked`, which the caller turns into the reference fallback and a warning that
says what to delete.

Compile check without a GPU (what CI cannot do, a developer machine with nvcc can); the
architectures then come from ``TORCH_CUDA_ARCH_LIST``::

    TORCH_CUDA_ARCH_LIST=9.0 python -m kdlab.kernels
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from .schema import define_ops

# torch.utils.cpp_extension is imported where a build needs it: importing it looks for a CUDA
# toolkit and warns on machines without one, and `import kdlab` must stay quiet there

SOURCES = [Path(__file__).with_name(n) for n in ("ops.cpp", "autograd.cpp", "kl.cu", "attention.cu", "scale.cu")]
HEADERS = [Path(__file__).with_name(n) for n in ("common.cuh", "kl_kernel.cuh", "attention_kernel.cuh", "op_args.h")]
MODES = ("auto", "reference", "fused", "triton")


class BuildLocked(RuntimeError):
    """Another build holds the kernels' build folder longer than the wait allows (or a killed one left its lock)."""


def mode() -> str:
    """``KDLAB_KERNELS``: ``auto`` (default: the CUDA kernels when they build, else the Triton ones when only
    ``nvcc`` or ``ninja`` is missing, else the reference with a warning), ``reference`` (always the
    pure-PyTorch path), ``fused`` (fail instead of falling back to the reference) or ``triton`` (the Triton
    kernels even where the CUDA ones would build, to compare them)."""
    value = os.environ.get("KDLAB_KERNELS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"KDLAB_KERNELS={value!r} is not valid; allowed values: {', '.join(MODES)}")
    return value


def find_nvcc() -> str | None:
    """Path of ``nvcc``: on PATH, else under ``CUDA_HOME`` as PyTorch finds it."""
    from torch.utils import cpp_extension

    found = shutil.which("nvcc")
    if found:
        return found
    home = cpp_extension.CUDA_HOME
    candidate = Path(home) / "bin" / "nvcc" if home else None
    return str(candidate) if candidate is not None and candidate.exists() else None


def missing_requirement(need_device: bool = True) -> str | None:
    """Why the fused kernels cannot be built here, or ``None`` when everything is present."""
    from torch.utils import cpp_extension

    if mode() == "reference":
        return "KDLAB_KERNELS=reference asks for the pure-PyTorch reference implementation"
    if torch.version.cuda is None:
        return "this PyTorch build has no CUDA support"
    if need_device and not torch.cuda.is_available():
        return "no CUDA device is visible"
    if find_nvcc() is None:
        return (f"nvcc (the CUDA compiler) was not found on PATH or under CUDA_HOME; install the CUDA toolkit "
                f"{torch.version.cuda} and set CUDA_HOME")
    if not cpp_extension.is_ninja_available():
        return "ninja was not found (pip install ninja)"
    return None


def visible_archs() -> list[str]:
    """Compute capabilities to compile for, as ``"major.minor"``: every visible GPU's; without a GPU (a
    compile check), those listed in ``TORCH_CUDA_ARCH_LIST`` (read, never written)."""
    if torch.cuda.is_available() and torch.cuda.device_count():
        return sorted({"{}.{}".format(*torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())},
                      key=lambda a: tuple(map(int, a.split("."))))
    listed = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(";", " ").replace(",", " ").split()
    archs = sorted({a.removesuffix("+PTX") for a in listed}, key=lambda a: tuple(map(int, a.split("."))))
    if not archs:
        raise RuntimeError("no CUDA GPU is visible and TORCH_CUDA_ARCH_LIST is not set: nothing to compile for "
                           "(e.g. TORCH_CUDA_ARCH_LIST=9.0 python -m kdlab.kernels)")
    return archs


def arch_flags(archs: list[str]) -> list[str]:
    """nvcc flags: machine code for each architecture (``"9.0"`` -> ``sm_90``) and PTX of the newest, which
    the driver compiles for GPUs newer than any listed."""
    codes = [a.replace(".", "") for a in archs]
    return ([f"-gencode=arch=compute_{c},code=sm_{c}" for c in codes]
            + [f"-gencode=arch=compute_{codes[-1]},code=compute_{codes[-1]}"])


def sources_digest() -> str:
    """SHA-256 prefix of every kernel source and header (PyTorch's build cache does not hash headers)."""
    return hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS)).hexdigest()[:16]


def build_key(archs: list[str]) -> str:
    """What makes one build differ from another: sources, architectures, Python, PyTorch and CUDA versions."""
    parts = [sources_digest(), ",".join(archs), f"py{sys.version_info[0]}{sys.version_info[1]}", torch.__version__,
             str(torch.version.cuda)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def build_dir(key: str) -> Path:
    """The build folder of one build key, under PyTorch's extensions root (``TORCH_EXTENSIONS_DIR`` or
    ``~/.cache/torch_extensions``)."""
    from torch.utils import cpp_extension

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()) / f"kdlab_kernels_{key}"


def wait_for_lock(folder: Path, timeout: float | None = None, poll: float = 0.5) -> None:
    """Return once PyTorch's build lock ``folder/lock`` is free, waiting at most ``timeout`` seconds (default
    ``KDLAB_KERNELS_LOCK_WAIT``, 300); then raise :class:`BuildLocked` naming the file. An operating-system
    lock (recent PyTorch) is taken and released at once; an existence lock (older PyTorch) is waited out."""
    from torch.utils import cpp_extension

    lock = folder / "lock"
    if timeout is None:
        timeout = float(os.environ.get("KDLAB_KERNELS_LOCK_WAIT", "300"))
    if hasattr(cpp_extension, "FileLock"):  # the kernel frees it when its holder dies: only a live build holds it
        import filelock

        try:
            with filelock.FileLock(str(lock), timeout=timeout):
                return
        except filelock.Timeout:
            raise BuildLocked(f"another process has been building the kernels in {folder} for more than "
                              f"{timeout:.0f} s (it holds {lock}); wait for it, or stop it") from None
    deadline = time.monotonic() + timeout
    while lock.exists():
        if time.monotonic() >= deadline:
            raise BuildLocked(f"{lock} has locked the kernels' build folder for more than {timeout:.0f} s; if no other "
                              "process is building them, a killed build left it behind: delete it (or the folder)")
        time.sleep(poll)


# The oldest Triton the kernels are checked with: every plan compiles for sm_90, with no spills and the same load
# widths, under 3.3.1, 3.4.0, 3.5.1, 3.6.0 and 3.8.0 (tools/triton_sass.py, 2026-12-01), and each of these
# interpreters runs tests/test_kernels_triton.py. Triton 3.0 (PyTorch 2.4's) refuses them in its interpreter;
# 3.2's compiler interface is not the one the table tool reads.
TRITON_OLDEST = (3, 3)


def major_minor(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``"3.6.0"`` or ``"2.4.0rc1"``."""
    return tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", version).groups())


def triton_too_old(version: str) -> str | None:
    """Why Triton ``version`` cannot run kdlab's Triton kernels, or ``None``."""
    if major_minor(version) < TRITON_OLDEST:
        return (f"Triton {version} is older than {'.'.join(map(str, TRITON_OLDEST))}, the oldest kdlab's Triton "
                "kernels are checked with (a newer PyTorch brings a newer Triton)")
    return None


def triton_possible() -> str | None:
    """Why the Triton kernels cannot run here, or ``None``: they need a CUDA device, PyTorch with CUDA and
    an importable ``triton`` of at least :data:`TRITON_OLDEST` (a plain ``pip install torch`` on Linux brings
    it), no ``nvcc``."""
    if mode() == "reference":
        return "KDLAB_KERNELS=reference asks for the pure-PyTorch reference implementation"
    if torch.version.cuda is None or not torch.cuda.is_available():
        return "no CUDA device is visible"
    try:
        import triton
    except ImportError:
        return "Triton is not installed"
    return triton_too_old(triton.__version__)


def compile_and_load(verbose: bool = False) -> None:
    """Compile (or reuse the cached build of) the CUDA sources for :func:`visible_archs` in
    :func:`build_dir` and load the library, which registers the CUDA implementations of
    ``torch.ops.kdlab.*``. Raises on any failure (:class:`BuildLocked` after a time-limited wait)."""
    from torch.utils import cpp_extension

    archs = visible_archs()
    key = build_key(archs)
    folder = build_dir(key)
    folder.mkdir(parents=True, exist_ok=True)
    wait_for_lock(folder)
    flags = ["-O3", f"-DKDLAB_SOURCES_SHA256={sources_digest()}"]
    cpp_extension.load(name=f"kdlab_kernels_{key}", sources=[str(p) for p in SOURCES],
                       extra_cuda_cflags=flags + arch_flags(archs), extra_cflags=flags, build_directory=str(folder),
                       is_python_module=False, verbose=verbose)


def main() -> int:
    define_ops()  # the schemas must exist before the CUDA implementations register
    reason = missing_requirement(need_device=False)
    if reason:
        print(f"cannot build the kdlab kernels: {reason}")
        return 1
    t0 = time.perf_counter()
    compile_and_load(verbose="-v" in sys.argv)
    registered = {op: torch._C._dispatch_has_kernel_for_dispatch_key(f"kdlab::{op}", "CUDA")
                  for op in ("kl_fused", "attention_fused", "apply_upstream_")}
    archs = visible_archs()
    print(f"built and loaded the kdlab kernels in {time.perf_counter() - t0:.0f} s for compute capability "
          f"{', '.join(archs)} in {build_dir(build_key(archs))}; CUDA implementations registered: {registered}")
    return 0 if all(registered.values()) else 1
