"""Several processes on a GPU (tools/gpu-check ddp): SyncBatchNorm and DDP between two processes sharing one GPU.

The CPU tests cannot check SyncBatchNorm (PyTorch has no CPU kernels for it), and the GPU machine this project
is lent has one GPU, where NCCL refuses two processes. Gloo takes CUDA tensors, so two processes on ``cuda:0``
run what several GPUs run: kdlab's conversion to SyncBatchNorm, statistics gathered over the global batch, and
DDP's gradient average.

Tolerance: the references train the same network on the whole batch in one process. Without TF32 the two runs
differ by the order of float32 additions; plain SGD keeps the weight update linear in the gradient (Adam's first
steps would turn a rounding difference in a near-zero gradient entry into a whole step), so the relative
difference of the updates is of the order of float32 rounding; the bound is 1e-4. Normalising each half
separately (what DDP gives without SyncBatchNorm) moves the update by far more than that, which the test
checks too, so it can tell the two apart.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from sync_batchnorm_job import LR, exact_float32, student_and_batches
from test_distributed import JOB, ROOT, one_thread_env, relative_update_difference

SYNC_JOB = JOB.with_name("sync_batchnorm_job.py")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def train_in_one_process(device: torch.device, halves: bool) -> tuple[dict, dict]:
    """The job's steps in one process: the whole batch through plain BatchNorm, or (``halves``) each half
    normalised on its own and the two halves' losses averaged. Returns (initial, final) state dicts."""
    exact_float32()
    net, batches = student_and_batches(device)
    initial = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    for z, y in batches:
        z, y = z.to(device), y.to(device)
        parts = zip(z.chunk(2), y.chunk(2)) if halves else [(z, y)]
        loss = torch.stack([F.mse_loss(net(zi), yi) for zi, yi in parts]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return initial, {k: v.detach().cpu() for k, v in net.state_dict().items()}


@needs_cuda
def test_two_processes_on_one_gpu_normalise_with_the_global_batch_and_train_like_one(tmp_path):
    out = tmp_path / "two.safetensors"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    done = subprocess.run([*torchrun, str(SYNC_JOB), str(out), "cuda:0"], cwd=ROOT, env=one_thread_env(),
                          capture_output=True, text=True, timeout=90)  # within gpu-check's limit for the step
    assert done.returncode == 0, done.stderr[-3000:]
    two = load_file(out)
    initial, whole = train_in_one_process(torch.device("cuda", 0), halves=False)
    _, halves = train_in_one_process(torch.device("cuda", 0), halves=True)
    params = {k: v for k, v in initial.items() if "running" not in k and "num_batches" not in k}
    stats = [k for k in initial if k not in params]  # BatchNorm's running statistics
    to_whole, halves_to_whole = (relative_update_difference(params, whole, x) for x in (two, halves))
    print(f"relative update difference to the whole batch: two processes {to_whole:.2e}, halves {halves_to_whole:.2e}; "
          f"running statistics: largest difference {max((two[k] - whole[k]).abs().max().item() for k in stats):.2e}")
    assert to_whole < 1e-4
    assert halves_to_whole > 1e-2  # what SyncBatchNorm is there to prevent
    for k in stats:  # those of each whole batch
        torch.testing.assert_close(two[k], whole[k], rtol=1e-4, atol=1e-6)
