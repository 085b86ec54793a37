"""Run by tests/test_distributed_gpu.py as ``torchrun --nproc-per-node 2 tests/sync_batchnorm_job.py OUT [DEVICE]``.

Both processes train on one device (default ``cuda:0``) in a Gloo group: NCCL refuses two processes on one GPU,
while Gloo takes CUDA tensors and PyTorch's SyncBatchNorm supports it. So on a machine with a single GPU,
:func:`kdlab.distributed.wrap` converts the generator's BatchNorm to SyncBatchNorm (statistics of the global
batch, gathered from both processes) and DDP averages the gradients between them, as on several GPUs. Each
process takes its half of every global batch (:func:`kdlab.distributed.shard`); rank 0 saves the weights and
BatchNorm buffers to OUT. ``cpu`` as DEVICE runs the same job without SyncBatchNorm (it has no CPU kernels):
each process then normalises its own half.
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.nn import functional as F

from kdlab import distributed, models

STEPS, BATCH, LR = 3, 16, 0.05


def exact_float32() -> None:
    """No TF32 in convolutions or matrix products: two half batches and one whole batch then differ only by the
    order of float32 additions."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def student_and_batches(device: torch.device) -> tuple[models.Generator, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A small DCGAN generator (seed 0; BatchNorm after each transposed convolution) on ``device``, and each
    step's global batch ``(noise [BATCH, 64], target images [BATCH, 1, 28, 28] in [-1, 1])``, drawn on the CPU."""
    torch.manual_seed(0)
    net = models.Generator(width=8).to(device)
    g = torch.Generator().manual_seed(1)
    return net, [(torch.randn(BATCH, net.noise_dim, generator=g), torch.rand(BATCH, 1, 28, 28, generator=g) * 2 - 1)
                 for _ in range(STEPS)]


def main(out: str, device: str = "cuda:0") -> None:
    exact_float32()
    dist.init_process_group("gloo")  # torchrun's environment
    try:
        dev = torch.device(device)
        w = distributed.World(dist.get_rank(), dist.get_world_size(), launched=True)
        net, batches = student_and_batches(dev)
        ddp = distributed.wrap(net, w, dev)
        synced = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and synced == (3 if dev.type == "cuda" else 0)
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        for z, y in batches:
            loss = F.mse_loss(ddp(distributed.shard(z, w).to(dev)), distributed.shard(y, w).to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if w.main:
            save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, out)
    finally:
        distributed.leave()


if __name__ == "__main__":
    main(*sys.argv[1:])
