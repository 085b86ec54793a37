"""kdlab's CUDA kernels on the CPU, under a SIMT emulator: a checker for machines without a GPU.

The kernel templates in ``kl_kernel.cuh`` and ``attention_kernel.cuh`` are compiled a second time by
the host C++ compiler against ``tools/simt/simt.hpp``, which runs every CUDA thread as a fiber and
checks what a GPU would not report: barriers that some threads never reach, warp shuffles whose
lanes diverged, out-of-bounds accesses to global or shared memory (guard pages), reads of shared
memory nobody wrote (it starts as NaN), and data races (run with ``order="ascending"``,
``"descending"`` and ``"shuffled"``: a race-free kernel gives bitwise-identical results). The launch
plans are the CUDA build's own (``kl_rows_plan``, ``kl_columns_plan``, ``attention_blocks``).

It is slow (a fiber switch per barrier and thread) and float32 only: use small shapes. It checks
the kernels' logic, not their speed or the float16/bfloat16 conversions, and not the hardware's
memory model beyond the races a schedule can expose.

>>> import emulate  # with tools/simt on sys.path
>>> loss, grad = emulate.kl_fused(student, teacher, temperature=2.0, reverse=False)  # doctest: +SKIP
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from kdlab.kernels import build

HERE = Path(__file__).parent
KERNELS = Path(build.__file__).parent  # kdlab/kernels: the .cuh headers nvcc compiles too
SOURCES = [HERE / "simt.cpp", HERE / "launch.cpp"]
HEADERS = [HERE / "simt.hpp", HERE / "launch.hpp", *build.HEADERS]  # + the kernels
ORDERS = {"ascending": 0, "descending": 1, "shuffled": 2}
GUARDS = {"end": 0, "start": 1}  # which side of each buffer touches an inaccessible page
FLAGS = ["-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Wno-unknown-pragmas"]

_lib = None
_private = None  # a per-process build folder when the shared one cannot be trusted
_lock = threading.Lock()  # the emulator is single-threaded (global scheduler state)


class EmulatorError(RuntimeError):
    """The emulated kernel did something a GPU would hang on, fault on or leave undefined."""


def compiler() -> str | None:
    """The host C++ compiler (``$CXX``, else ``g++`` or ``c++``), or ``None`` if there is none."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build(extra_sources: list[Path] = (), name: str = "kdlab_simt") -> ctypes.CDLL:
    """Compile the emulator and the kernels (plus ``extra_sources``) into a shared library, cached
    in the temporary folder under a digest of every source, and load it (about 2 s the first time)."""
    cxx = compiler()
    if cxx is None:
        raise EmulatorError("no C++ compiler found (set CXX or install g++) to build the SIMT emulator")
    sources = [*SOURCES, *map(Path, extra_sources)]
    cmd = [cxx, *FLAGS, f"-I{HERE}", f"-I{KERNELS}", *map(str, sources)]
    key = "\0".join(cmd).encode() + b"".join(p.read_bytes() for p in sources + HEADERS)
    out = _cache_folder() / f"{name}-{hashlib.sha256(key).hexdigest()[:16]}.so"
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run([*cmd, "-o", str(tmp)], capture_output=True, text=True)
        if result.returncode != 0:
            raise EmulatorError(f"building the SIMT emulator failed:\n{result.stderr[-3000:]}")
        os.replace(tmp, out)  # atomic: concurrent builders never load a half-written library
    return ctypes.CDLL(str(out))


def _cache_folder() -> Path:
    """A folder for built libraries that only this user can write: the shared temporary folder's
    ``kdlab-simt-<uid>`` if it is ours and private, else a fresh private one for this process."""
    global _private
    folder = Path(tempfile.gettempdir()) / f"kdlab-simt-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077 == 0:
            return folder
    except OSError:
        pass
    if _private is None:
        _private = Path(tempfile.mkdtemp(prefix="kdlab-simt-"))
    return _private


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = build()
        i64, f32, i32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_void_p
        lib.kdlab_emulate_kl.argtypes = [ptr, ptr, ptr, ptr, i64, i32, i64, f32, i32, i32, i32, f32, ptr, i32, i32,
                                         ctypes.c_uint64, i32, ctypes.c_char_p, i32]
        lib.kdlab_emulate_attention.argtypes = [ptr, ptr, ptr, ptr, i64, i32, i32, i32, f32, i32, f32, ptr, i32,
                                                ctypes.c_uint64, i32, ctypes.c_char_p, i32]
        lib.kdlab_kl_plan.argtypes = [i64, i32, i64, i32, i32, ctypes.POINTER(i64)]
        lib.kdlab_kl_plan.restype = None
        _lib = lib
    return _lib


def _float32(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype != torch.float32:
        raise TypeError(f"the emulator takes float32 CPU tensors; {what} is {x.dtype} on {x.device}")
    return x.contiguous()


def _call(fn, *args) -> None:
    error = ctypes.create_string_buffer(1024)
    with _lock:
        code = fn(*args, error, len(error))
    if code != 0:
        raise EmulatorError(error.value.decode())


def kl_plan(n: int, k: int, hw: int, rows: bool) -> dict:
    """The KL launch plan the CUDA launcher and the emulator use for logits ``[n, k, hw]`` in float32
    (``rows``: the class axis innermost, as for ``[N, K]`` and channels-last), with 16-byte loads where
    ``k % 4 == 0``: the kernel (``"columns"``, ``"rows"``), block size, threads per row, values per
    thread in registers (0: streaming), classes per load, one row per block, and (columns) whether
    every thread holds exactly ``per`` classes (the full-tile kernel)."""
    out = (ctypes.c_int64 * 8)()
    vec = 4 if rows and k % 4 == 0 else 1
    _library().kdlab_kl_plan(n, k, hw, int(rows), vec, out)
    blocks, threads, shared, group, per, vec, block_row, full = list(out)
    return {"kernel": "rows" if rows else "columns", "blocks": blocks, "threads": threads, "shared": shared,
            "group": group, "per": per, "vec": vec, "block_row": bool(block_row), "full": bool(full)}


def _reduce(loss: torch.Tensor, reduction: int) -> torch.Tensor:
    return loss if reduction == 0 else loss.mean() if reduction == 1 else loss.sum()


def _weight_value(weight_tensor: torch.Tensor | None):
    """A pointer to the weight tensor's one float32 value, or None (and the tensor, kept alive by the caller)."""
    if weight_tensor is None:
        return None, None
    w = weight_tensor.detach().reshape(1).to(torch.float32).contiguous()
    return ctypes.c_void_p(w.data_ptr()), w


def kl_fused(student: torch.Tensor, teacher: torch.Tensor, temperature: float, reverse: bool, reduction: int = 0,
             weight: float = 1.0, weight_tensor: torch.Tensor | None = None, stream_threads: int = 512,
             order: str = "ascending", seed: int = 0, guard: str = "end") -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.kdlab.kl_fused`` computed by the CUDA kernels' source under the emulator: logits
    ``[N, K, *spatial]`` float32 -> (``T^2 KL`` per position ``[N, *spatial]`` or its mean / sum,
    gradient like the logits). Contiguous logits take the columns kernel (the rows kernel when there are
    no spatial axes); channels-last 4-D logits take the rows kernel on their own memory order, as on a
    GPU. ``weight`` and ``weight_tensor`` as in the op; ``stream_threads``: threads of a streaming row
    (``KDLAB_KL_STREAM_THREADS`` on a GPU); ``order``: thread schedule between barriers;
    ``guard``: which side of every buffer touches an inaccessible page ("end" or "start")."""
    for x, what in ((student, "student"), (teacher, "teacher")):
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise TypeError(f"the emulator takes float32 CPU tensors; {what} is {x.dtype} on {x.device}")
    if student.shape != teacher.shape or student.dim() < 2 or student.shape[1] < 2:
        raise ValueError(f"expected logits [N, K >= 2, *spatial] of one shape, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    rows = (student.dim() == 4 and not student.is_contiguous()
            and all(x.is_contiguous(memory_format=torch.channels_last) for x in (student, teacher)))
    n, k, hw = student.shape[0], student.shape[1], math.prod(student.shape[2:])
    # the memory as the kernel reads it: [N, K, HW], or rows [N HW, K] for channels-last
    s, t = ((x.permute(0, 2, 3, 1).contiguous() if rows else x.contiguous()) for x in (student, teacher))
    loss = torch.empty((n, *student.shape[2:]), dtype=torch.float32)
    grad = torch.empty_like(s)
    w_ptr, _keep = _weight_value(weight_tensor)
    if s.numel():
        _call(_library().kdlab_emulate_kl, s.data_ptr(), t.data_ptr(), loss.data_ptr(), grad.data_ptr(), n, k, hw,
              float(temperature), int(reverse), reduction, int(rows), float(weight), w_ptr, int(stream_threads),
              ORDERS[order], seed, GUARDS[guard])
    return _reduce(loss, reduction), (grad.permute(0, 3, 1, 2) if rows else grad)


def attention_fused(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0, reduction: int = 0,
                    weight: float = 1.0, weight_tensor: torch.Tensor | None = None, order: str = "ascending",
                    seed: int = 0, guard: str = "end") -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.kdlab.attention_fused`` computed by the CUDA kernel's source under the emulator:
    features ``[N, C_S, H, W]``, ``[N, C_T, H, W]`` float32 -> (loss per sample ``[N]`` or its mean /
    sum, gradient ``[N, C_S, H, W]``)."""
    s, t = _float32(student, "student"), _float32(teacher, "teacher")
    if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
        raise ValueError(f"expected features [N, C, H, W] with equal N, H, W, got {tuple(s.shape)} and {tuple(t.shape)}")
    n, cs, ct, hw = s.shape[0], s.shape[1], t.shape[1], s.shape[2] * s.shape[3]
    loss = torch.empty(n, dtype=torch.float32)
    grad = torch.empty_like(s)
    w_ptr, _keep = _weight_value(weight_tensor)
    if s.numel():
        _call(_library().kdlab_emulate_attention, s.data_ptr(), t.data_ptr(), loss.data_ptr(), grad.data_ptr(), n,
              cs, ct, hw, float(p), reduction, float(weight), w_ptr, ORDERS[order], seed, GUARDS[guard])
    return _reduce(loss, reduction), grad
