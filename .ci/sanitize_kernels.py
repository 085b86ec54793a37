"""Every fused-kernel instantiation path once, at small shapes, for compute-sanitizer (memcheck,
racecheck, synccheck) on a GPU machine: .ci/gpu-check runs it. Exits 1 if a result is off."""
import os
import sys

import torch

os.environ.setdefault("KDLAB_KERNELS", "fused")
from kdlab import kernels  # noqa: E402
from kdlab.kernels import reference  # noqa: E402

assert kernels.available(), kernels.reason()
g = torch.Generator(device="cuda").manual_seed(0)
bad = []
# rows / spatial x registers (K <= 256) / shared-memory loop (K > 256), partial tiles, both directions
for shape in [(37, 10), (5, 300), (3, 7, 5, 7), (2, 257, 3, 3), (1, 12287)]:
    for dtype in (torch.float32, torch.bfloat16):
        for reverse in (False, True):
            s = (3 * torch.randn(shape, generator=g, device="cuda")).to(dtype)
            t = (3 * torch.randn(shape, generator=g, device="cuda")).to(dtype)
            loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, reverse, 1)
            ref_loss, ref_grad = reference.kl_fused(s.float(), t.float(), 2.0, reverse, 1)
            if not torch.allclose(loss, ref_loss, rtol=3e-2, atol=1e-4):
                bad.append(("kl", shape, dtype, reverse))
for s_shape, t_shape in [((3, 5, 5, 7), (3, 11, 5, 7)), ((2, 3, 33, 34), (2, 4, 33, 34))]:
    for p in (2.0, 3.0):
        fs, ft = torch.randn(s_shape, generator=g, device="cuda"), torch.randn(t_shape, generator=g, device="cuda")
        loss, grad = torch.ops.kdlab.attention_fused(fs, ft, p, 0)
        if not torch.allclose(loss, reference.attention_fused(fs, ft, p, 0)[0], rtol=1e-4, atol=1e-6):
            bad.append(("attention", s_shape, p))
torch.cuda.synchronize()
print("sanitize_kernels:", "all results match the reference" if not bad else f"MISMATCH {bad}")
sys.exit(1 if bad else 0)
