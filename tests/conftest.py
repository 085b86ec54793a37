import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# notebook kernels started by the tests inherit this: no interactive widgets, whose display can stall
# a headless nbclient run (jupyter/nbclient#312); the widget tests switch them back on
os.environ["KDLAB_WIDGETS"] = "0"
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def mnist5k_train():
    import kdlab as kd

    return kd.data.as_tensors(kd.data.load("mnist5k", "train"))


def pytest_configure(config):
    """``KDLAB_TEST_EXTENSION=1`` (a developer machine with nvcc, no GPU needed; set TORCH_CUDA_ARCH_LIST): build
    and load the CUDA extension first, so the CPU tests of the ops (tests/test_kernels.py) run through its C++
    autograd (autograd.cpp, registered for CPU too) instead of schema.py's Python formula."""
    if os.environ.get("KDLAB_TEST_EXTENSION") == "1":
        from kdlab.kernels import build  # importing kdlab.kernels defines the ops' schemas

        build.compile_and_load()
        assert torch._C._dispatch_has_kernel_for_dispatch_key("kdlab::kl_fused", "AutogradCPU")
