"""How the fused kernels are built (kdlab.kernels.build), without compiling: architectures, build folders
and the time-limited wait for PyTorch's build lock."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from kdlab import kernels
from kdlab.kernels import build


def test_every_visible_architecture_is_compiled_and_the_newest_as_ptx_too(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: [(9, 0), (8, 6), (9, 0)][i])
    before = dict(os.environ)
    assert build.visible_archs() == ["8.6", "9.0"]
    assert os.environ == before  # the process environment is not changed
    assert build.arch_flags(["8.6", "9.0"]) == ["-gencode=arch=compute_86,code=sm_86", "-gencode=arch=compute_90,code=sm_90",
                                                "-gencode=arch=compute_90,code=compute_90"]


def test_without_a_gpu_the_architectures_come_from_the_arch_list(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0;8.0+PTX 10.0")
    assert build.visible_archs() == ["8.0", "9.0", "10.0"]  # numeric order, not text order
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    with pytest.raises(RuntimeError, match="TORCH_CUDA_ARCH_LIST is not set"):
        build.visible_archs()


def test_each_build_key_has_its_own_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    keys = {build.build_key(["9.0"]), build.build_key(["8.0", "9.0"])}
    monkeypatch.setattr(torch, "__version__", "0.0.0")  # another PyTorch: another build
    keys.add(build.build_key(["9.0"]))
    assert len(keys) == 3
    assert {build.build_dir(k).parent for k in keys} == {tmp_path}


def _hold_lock(path) -> subprocess.Popen:
    code = ("import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_killed_build_does_not_block_the_next_one(tmp_path):
    """PyTorch's own lock (an operating-system lock on build_dir/lock): while another process holds it,
    the wait gives up after its timeout; once that process is killed (as a build killed halfway), the
    lock is free at once although its file stays."""
    from torch.utils import cpp_extension

    if not hasattr(cpp_extension, "FileLock"):
        pytest.skip("this PyTorch uses an existence lock (tested below)")
    holder = _hold_lock(tmp_path / "lock")
    start = time.monotonic()
    with pytest.raises(build.BuildLocked, match="for more than 0 s"):
        build.wait_for_lock(tmp_path, timeout=0.3)
    assert time.monotonic() - start < 5
    holder.kill()
    holder.wait()
    assert (tmp_path / "lock").exists()
    build.wait_for_lock(tmp_path, timeout=5)  # returns: the kernel released the dead holder's lock


def test_an_existence_lock_left_by_a_killed_build_is_waited_out_then_reported(tmp_path, monkeypatch):
    """Older PyTorch waits while build_dir/lock exists; a killed build leaves it there."""
    from torch.utils import cpp_extension

    monkeypatch.delattr(cpp_extension, "FileLock", raising=False)
    build.wait_for_lock(tmp_path, timeout=0)  # no lock: no wait
    (tmp_path / "lock").touch()
    with pytest.raises(build.BuildLocked, match="a killed build left it behind: delete it"):
        build.wait_for_lock(tmp_path, timeout=0.2, poll=0.05)


def test_a_locked_build_falls_back_to_the_reference_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setitem(kernels._state, "checked", False)
    monkeypatch.setitem(kernels._state, "available", False)
    monkeypatch.setitem(kernels._state, "reason", "not checked yet")
    monkeypatch.setattr(build, "missing_requirement", lambda: None)
    monkeypatch.setattr(build, "visible_archs", lambda: ["9.0"])
    monkeypatch.setattr(build, "build_dir", lambda key: tmp_path)
    monkeypatch.setenv("KDLAB_KERNELS_LOCK_WAIT", "0.2")
    monkeypatch.delenv("KDLAB_KERNELS", raising=False)
    holder = _hold_lock(tmp_path / "lock")
    try:
        assert kernels.available() is False
    finally:
        holder.kill()
        holder.wait()
    assert "BuildLocked" in kernels.reason() and str(tmp_path) in kernels.reason()
