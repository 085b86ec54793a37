"""Every fused-kernel instantiation path once, at small shapes, for compute-sanitizer (memcheck,
racecheck, synccheck) on a GPU machine: tools/gpu-check runs it. Exits 1 if a result is off."""
import os
import sys

import torch

os.environ.setdefault("KDLAB_KERNELS", "fused")
from kdlab import kernels  # noqa: E402
from kdlab.kernels import reference  # noqa: E402

assert kernels.available(), kernels.reason()
g = torch.Generator(device="cuda").manual_seed(0)
bad = []
# every path of kl_row (4-lane groups K <= 4, 16-lane groups K <= 16, registers K <= 256, the
# shared-memory loop beyond) in both layouts, partial tiles, both directions, values and gradients
for shape in [(300, 3), (2, 3, 31, 17), (37, 10), (3, 7, 5, 7), (64, 17), (5, 200), (2, 100, 5, 7), (5, 300),
              (2, 257, 3, 3), (1, 12287)]:
    for dtype in (torch.float32, torch.bfloat16):
        for reverse in (False, True):
            s = (3 * torch.randn(shape, generator=g, device="cuda")).to(dtype)
            t = (3 * torch.randn(shape, generator=g, device="cuda")).to(dtype)
            loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, reverse, 1)
            ref_loss, ref_grad = reference.kl_fused(s.float(), t.float(), 2.0, reverse, 1)
            tol = 3e-2 * ref_grad.abs().max().item() + 1e-6
            if not torch.allclose(loss, ref_loss, rtol=3e-2, atol=1e-4) or not torch.allclose(grad.float(), ref_grad, atol=tol):
                bad.append(("kl", shape, dtype, reverse))
for s_shape, t_shape in [((3, 5, 5, 7), (3, 11, 5, 7)), ((2, 3, 33, 34), (2, 4, 33, 34))]:
    for p in (2.0, 3.0):
        fs, ft = torch.randn(s_shape, generator=g, device="cuda"), torch.randn(t_shape, generator=g, device="cuda")
        loss, grad = torch.ops.kdlab.attention_fused(fs, ft, p, 0)
        ref_loss, ref_grad = reference.attention_fused(fs, ft, p, 0)
        if not torch.allclose(loss, ref_loss, rtol=1e-4, atol=1e-6) or not torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-8):
            bad.append(("attention", s_shape, p))
torch.cuda.synchronize()
print("sanitize_kernels:", "all results match the reference" if not bad else f"MISMATCH {bad}")
sys.exit(1 if bad else 0)
