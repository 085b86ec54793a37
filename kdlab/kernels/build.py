"""Building the fused CUDA kernels on first use (``torch.utils.cpp_extension``, cached in PyTorch's
extensions folder), and the guard that decides whether to try.

The build is attempted only when ``KDLAB_KERNELS`` is not ``reference``, a CUDA device is visible,
PyTorch was built with CUDA, and both ``nvcc`` and ``ninja`` are found. ``TORCH_CUDA_ARCH_LIST``
defaults to the local GPU's compute capability so only one architecture is compiled.

Compile check without a GPU (what CI cannot do, a developer machine with nvcc can)::

    TORCH_CUDA_ARCH_LIST=9.0 python -m kdlab.kernels
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from .schema import define_ops

# torch.utils.cpp_extension is imported where a build needs it: importing it looks for a CUDA
# toolkit and warns on machines without one, and `import kdlab` must stay quiet there

SOURCES = [Path(__file__).with_name(n) for n in ("ops.cpp", "kl.cu", "attention.cu")]
HEADERS = [Path(__file__).with_name(n) for n in ("common.cuh", "kl_kernel.cuh", "attention_kernel.cuh")]
MODES = ("auto", "reference", "fused")


def mode() -> str:
    """``KDLAB_KERNELS``: ``auto`` (default: fused when possible, else the reference with a warning),
    ``reference`` (always the pure-PyTorch path) or ``fused`` (fail instead of falling back)."""
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


def compile_and_load(verbose: bool = False) -> None:
    """Compile (or reuse the cached build of) the CUDA sources and load the library, which registers
    the CUDA implementations of ``torch.ops.kdlab.*``. Raises on any failure."""
    from torch.utils import cpp_extension

    if "TORCH_CUDA_ARCH_LIST" not in os.environ and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"  # one architecture: a short build
    # the kernels live in headers, which PyTorch's build cache does not hash: a digest of every
    # source in the flags makes any edit a new build
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS)).hexdigest()[:16]
    flags = ["-O3", f"-DKDLAB_SOURCES_SHA256={digest}"]
    cpp_extension.load(name="kdlab_kernels", sources=[str(p) for p in SOURCES], extra_cuda_cflags=flags,
                       extra_cflags=flags, is_python_module=False, verbose=verbose)


def main() -> int:
    define_ops()  # the schemas must exist before the CUDA implementations register
    reason = missing_requirement(need_device=False)
    if reason:
        print(f"cannot build the kdlab kernels: {reason}")
        return 1
    t0 = time.perf_counter()
    compile_and_load(verbose="-v" in sys.argv)
    registered = {op: torch._C._dispatch_has_kernel_for_dispatch_key(f"kdlab::{op}", "CUDA")
                  for op in ("kl_fused", "attention_fused")}
    print(f"built and loaded kdlab_kernels in {time.perf_counter() - t0:.0f} s "
          f"(TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', 'default')}); "
          f"CUDA implementations registered: {registered}")
    return 0 if all(registered.values()) else 1
