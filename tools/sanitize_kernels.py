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
# every launch plan of kl_kernel.cuh (columns: 2, 8, 32 classes per thread, streaming, each with classes
# padded beyond K; rows: lane groups, a block per row, streaming; 4- and 16-byte loads; channels-last)
# with partial tiles, both directions, values and gradients, and a weight tensor read on the device
w = torch.tensor(0.5, device="cuda")
for shape, channels_last in [((300, 3), False), ((2, 3, 31, 17), False), ((37, 10), False), ((3, 40, 5, 7), False),
                             ((2, 100, 5, 7), False), ((2, 257, 3, 3), False), ((64, 17), False), ((5, 200), False),
                             ((3, 1000), False), ((2, 4100), False), ((1, 20000), False), ((2, 24, 3, 5), True),
                             ((2, 12, 6, 6), False), ((2, 40, 5, 6), False), ((2, 200, 3, 34), False)]:
    for dtype in (torch.float32, torch.bfloat16):
        for reverse in (False, True):
            layout = torch.channels_last if channels_last else torch.contiguous_format
            s = (3 * torch.randn(shape, generator=g, device="cuda")).to(dtype).contiguous(memory_format=layout)
            t = (3 * torch.randn(shape, generator=g, device="cuda")).to(dtype).contiguous(memory_format=layout)
            loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, reverse, 1, 2.0, w)  # weight 2 x 0.5
            ref_loss, ref_grad = reference.kl_fused(s.float(), t.float(), 2.0, reverse, 1)
            tol = 3e-2 * ref_grad.abs().max().item() + 1e-6
            if not torch.allclose(loss, ref_loss, rtol=3e-2, atol=1e-4) or not torch.allclose(grad.float(), ref_grad, atol=tol):
                bad.append(("kl", shape, dtype, reverse))
for s_shape, t_shape in [((3, 5, 5, 7), (3, 11, 5, 7)), ((2, 3, 33, 34), (2, 4, 33, 34)), ((2, 70, 3, 3), (2, 131, 3, 3))]:
    for p in (2.0, 3.0):
        fs, ft = torch.randn(s_shape, generator=g, device="cuda"), torch.randn(t_shape, generator=g, device="cuda")
        loss, grad = torch.ops.kdlab.attention_fused(fs, ft, p, 0)
        ref_loss, ref_grad = reference.attention_fused(fs, ft, p, 0)
        if not torch.allclose(loss, ref_loss, rtol=1e-4, atol=1e-6) or not torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-8):
            bad.append(("attention", s_shape, p))
grad = torch.randn(1000, generator=g, device="cuda")  # the backward's device-side scaling, at 1 and at 3
before = grad.clone()
torch.ops.kdlab.apply_upstream_(grad, torch.ones((), device="cuda"))
ok = torch.equal(grad, before)
torch.ops.kdlab.apply_upstream_(grad, torch.full((), 3.0, device="cuda"))
if not ok or not torch.equal(grad, 3 * before):
    bad.append(("apply_upstream_",))
torch.cuda.synchronize()
print("sanitize_kernels:", "all results match the reference" if not bad else f"MISMATCH {bad}")
sys.exit(1 if bad else 0)
