"""The fused CUDA kernels against the reference (skipped without a CUDA GPU): values and gradients
over random shapes and dtypes, extreme logits, non-contiguous inputs, determinism, opcheck and
torch.compile(fullgraph=True)."""
import os

import pytest
import torch

from kdlab import kernels
from kdlab.kernels import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# tolerances on |fused - reference| relative to the reference's scale, per input dtype
TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-2, 2e-3), torch.bfloat16: (5e-2, 1e-2)}


@pytest.fixture(scope="module", autouse=True)
def fused():
    if os.environ.get("KDLAB_KERNELS") == "reference" or not kernels.available():
        pytest.skip(f"fused kernels unavailable: {kernels.reason()}")


def _ref_inputs(*xs):
    return [x.float() for x in xs]


# every launch plan of kl_kernel.cuh per dtype: columns with 2, 8, 32 classes per thread (full and partial
# register tiles; with 32, the full-tile kernel for K = 256 and the general one for K = 100) and streaming;
# rows with a few threads, a warp, a block per row and streaming, with 16-byte loads where K allows
# (K % 8 == 0 for 16-bit types, % 4 for float32)
SHAPES = [(64, 10), (33, 2), (16, 1000), (5, 4100), (4, 32768), (3, 65535), (2, 3, 31, 17), (4, 12, 8, 6),
          (4, 40, 9, 9), (4, 40, 10, 10), (4, 100, 7, 9), (16, 256, 28, 28), (8, 257, 5, 7), (4, 1024, 3, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
def test_kl_fused_matches_reference(shape, dtype, reverse):
    g = torch.Generator(device="cuda").manual_seed(0)
    s = (4 * torch.randn(shape, generator=g, device="cuda")).to(dtype)
    t = (4 * torch.randn(shape, generator=g, device="cuda")).to(dtype)
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, reverse)
    ref_loss, ref_grad = reference.kl_fused(*_ref_inputs(s, t), 2.0, reverse)
    rtol, atol = TOL[dtype]
    assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.shape == s.shape
    assert torch.allclose(loss, ref_loss, rtol=rtol, atol=atol * ref_loss.abs().max().item() + 1e-6)
    assert torch.allclose(grad.float(), ref_grad, rtol=rtol, atol=atol * ref_grad.abs().max().item() + 1e-6)


@pytest.mark.parametrize("threads", ["1024", "96"])
def test_streaming_rows_take_any_block_size_from_the_environment(threads, monkeypatch):
    """KDLAB_KL_STREAM_THREADS (kl.cu, a knob for measuring) sets the threads of a streaming row; the results
    match the reference for 4-byte and 16-byte loads, and a value the kernel cannot take is refused."""
    if kernels.backend() != "cuda":
        pytest.skip("the CUDA kernels' launch plan")
    monkeypatch.setenv("KDLAB_KL_STREAM_THREADS", threads)
    g = torch.Generator(device="cuda").manual_seed(1)
    for shape in [(5, 4101), (3, 40000)]:  # streaming with 4-byte and with 16-byte loads
        s, t = (4 * torch.randn(shape, generator=g, device="cuda") for _ in range(2))
        for reverse in (False, True):
            loss, grad = torch.ops.kdlab.kl_fused(s, t, 1.5, reverse)
            ref_loss, ref_grad = reference.kl_fused(s, t, 1.5, reverse)
            assert torch.allclose(loss, ref_loss, rtol=1e-4, atol=1e-6)
            assert torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-5 * ref_grad.abs().max().item())
    monkeypatch.setenv("KDLAB_KL_STREAM_THREADS", "100")
    with pytest.raises(RuntimeError, match="KDLAB_KL_STREAM_THREADS=100 is not valid"):
        torch.ops.kdlab.kl_fused(s, t, 1.5, False)


def test_kl_fused_extreme_logits_and_non_contiguous_inputs():
    s = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]], device="cuda")
    t = torch.tensor([[-1000.0, 1000.0, 0.0], [-1000.0, 1000.0, 0.0]], device="cuda")
    for reverse in (False, True):
        loss, grad = torch.ops.kdlab.kl_fused(s, t, 1.0, reverse)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert torch.allclose(loss.cpu(), torch.tensor([2000.0, 0.0]), atol=1e-3)
        # forward: T (q - p) = (1, -1, 0) and 0; reverse: q is one-hot at the student's own class,
        # where log q - log p - KL = 0 - (-2000) - 2000 = 0, and 0 elsewhere
        expected = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]) if not reverse else torch.zeros(2, 3)
        assert torch.allclose(grad.cpu(), expected, atol=1e-4)
    base = torch.randn(6, 8, 12, 10, device="cuda")
    s_nc, t_nc = base.transpose(2, 3), (base * 0.5 + 1).transpose(2, 3)  # [6, 8, 10, 12], not contiguous
    loss, grad = torch.ops.kdlab.kl_fused(s_nc, t_nc, 1.5, False)
    ref_loss, ref_grad = reference.kl_fused(s_nc, t_nc, 1.5, False)
    assert torch.allclose(loss, ref_loss, rtol=1e-4, atol=1e-6) and torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shapes", [((8, 64, 32, 32), (8, 256, 32, 32)), ((3, 5, 7, 9), (3, 12, 7, 9)),
                                    ((2, 16, 64, 64), (2, 16, 64, 64))])
def test_attention_fused_matches_reference(dtype, shapes):
    g = torch.Generator(device="cuda").manual_seed(1)
    fs = torch.randn(shapes[0], generator=g, device="cuda").to(dtype)
    ft = torch.randn(shapes[1], generator=g, device="cuda").to(dtype)
    loss, grad = torch.ops.kdlab.attention_fused(fs, ft, 2.0)
    ref_loss, ref_grad = reference.attention_fused(*_ref_inputs(fs, ft), 2.0)
    rtol, atol = TOL[dtype]
    assert torch.allclose(loss, ref_loss, rtol=rtol, atol=atol * ref_loss.abs().max().item() + 1e-7)
    assert torch.allclose(grad.float(), ref_grad, rtol=rtol, atol=atol * ref_grad.abs().max().item() + 1e-9)


@pytest.mark.parametrize("reduction", [1, 2])
def test_reduced_fused_ops_match_reference(reduction):
    g = torch.Generator(device="cuda").manual_seed(5)
    s, t = torch.randn(8, 64, 6, 6, generator=g, device="cuda"), torch.randn(8, 64, 6, 6, generator=g, device="cuda")
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, False, reduction)
    ref_loss, ref_grad = reference.kl_fused(s, t, 2.0, False, reduction)
    # float32 on both sides: |q - p| near 0 carries rounding of q and p (~1e-8 at this gradient's scale of ~0.1 for a
    # sum), so the bound is relative to the gradient's scale as in TOL (an absolute 1e-9 failed on an H200 for the
    # CUDA and the Triton kernels alike, 2026-11-30)
    scale = ref_grad.abs().max().item()
    assert loss.shape == () and torch.allclose(loss, ref_loss, rtol=1e-5)
    assert torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-5 * scale)
    fs, ft = torch.randn(4, 8, 16, 16, generator=g, device="cuda"), torch.randn(4, 16, 16, 16, generator=g, device="cuda")
    loss, grad = torch.ops.kdlab.attention_fused(fs, ft, 2.0, reduction)
    ref_loss, ref_grad = reference.attention_fused(fs, ft, 2.0, reduction)
    assert torch.allclose(loss, ref_loss, rtol=1e-5) and torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-9)


def test_fused_results_are_bitwise_deterministic():
    g = torch.Generator(device="cuda").manual_seed(2)
    s, t = torch.randn(32, 256, 16, 16, generator=g, device="cuda"), torch.randn(32, 256, 16, 16, generator=g, device="cuda")
    runs = [torch.ops.kdlab.kl_fused(s, t, 2.0, False) for _ in range(3)]
    assert all(torch.equal(r[0], runs[0][0]) and torch.equal(r[1], runs[0][1]) for r in runs)
    fs, ft = torch.randn(16, 64, 32, 32, generator=g, device="cuda"), torch.randn(16, 128, 32, 32, generator=g, device="cuda")
    at = [torch.ops.kdlab.attention_fused(fs, ft, 2.0) for _ in range(3)]
    assert all(torch.equal(r[0], at[0][0]) and torch.equal(r[1], at[0][1]) for r in at)


def test_public_losses_dispatch_to_the_kernel_and_backpropagate():
    from kdlab import feature_losses, losses

    g = torch.Generator(device="cuda").manual_seed(3)
    s = torch.randn(16, 64, 8, 8, generator=g, device="cuda", requires_grad=True)
    t = torch.randn(16, 64, 8, 8, generator=g, device="cuda")
    assert kernels.fused_path(s, t)
    kernels.kl_distillation(s, t, 2.0).backward()
    s_ref = s.detach().double().requires_grad_(True)
    kernels.kl_distillation(s_ref, t.double(), 2.0).backward()  # float64 takes the formula
    assert torch.allclose(s.grad.double(), s_ref.grad, rtol=1e-4, atol=1e-8)
    s_formula = s.detach().clone().requires_grad_(True)
    losses.kl_distillation(s_formula, t, 2.0).backward()  # the formula on the same CUDA tensors
    assert torch.allclose(s.grad, s_formula.grad, rtol=1e-4, atol=1e-5 * s_formula.grad.abs().max().item())
    fs = torch.randn(4, 8, 16, 16, generator=g, device="cuda", requires_grad=True)
    ft = torch.randn(4, 32, 16, 16, generator=g, device="cuda")
    kernels.attention_transfer(fs, ft).backward()
    fs_formula = fs.detach().clone().requires_grad_(True)
    feature_losses.attention_transfer(fs_formula, ft).backward()
    assert torch.isfinite(fs.grad).all()
    assert torch.allclose(fs.grad, fs_formula.grad, rtol=1e-4, atol=1e-5 * fs_formula.grad.abs().max().item())


def test_opcheck_and_compile_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(4)
    s = torch.randn(4, 10, 3, 3, generator=g, device="cuda", requires_grad=True)
    t = torch.randn(4, 10, 3, 3, generator=g, device="cuda")
    torch.library.opcheck(torch.ops.kdlab.kl_fused.default, (s, t, 2.0, True))
    fs = torch.randn(2, 3, 8, 8, generator=g, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.kdlab.attention_fused.default, (fs, torch.randn(2, 6, 8, 8, device="cuda"), 2.0))

    def f(s, t):
        return kernels.kl_distillation(s, t, 2.0) * 3

    compiled = torch.compile(f, fullgraph=True)
    assert torch.allclose(compiled(s, t), f(s, t))


def test_empty_batches_mixed_dtypes_and_transposed_inputs_on_cuda():
    empty = torch.randn(0, 4, 3, 3, device="cuda")
    loss, grad = torch.ops.kdlab.kl_fused(empty, empty.clone(), 1.0, False)
    assert loss.shape == (0, 3, 3) and grad.shape == (0, 4, 3, 3)
    s = torch.randn(8, 16, 4, 4, device="cuda").bfloat16().requires_grad_(True)
    assert not kernels.fused_path(s, s.detach().float() + 1)
    assert torch.isfinite(kernels.kl_distillation(s, s.detach().float() + 1))  # mixed dtypes: the formula
    base = torch.randn(3, 6, 5, 4, device="cuda")
    torch.library.opcheck(torch.ops.kdlab.kl_fused.default,
                          (base.transpose(2, 3).requires_grad_(True), base.transpose(2, 3), 1.5, False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weighted_forward_and_backward_without_a_host_synchronisation(dtype):
    """The weight goes into the kernel; the backward reads the upstream gradient on the device and returns
    the forward's own gradient (no copy) when it is 1, or scales it in place: the CPU never waits."""
    g = torch.Generator(device="cuda").manual_seed(6)
    s = torch.randn(16, 64, 8, 8, generator=g, device="cuda").to(dtype).requires_grad_(True)
    t = torch.randn(16, 64, 8, 8, generator=g, device="cuda").to(dtype)
    scale = torch.tensor(0.5, device="cuda")  # e.g. a gradient scaler's scale, already on the GPU
    _, ref_grad = reference.kl_fused(s.detach().float(), t.float(), 2.0, False, 1)
    rtol, atol = TOL[dtype]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, False, 1, 0.25, scale)
        (returned,) = torch.autograd.grad(loss, s)  # upstream 1
        loss2, grad2 = torch.ops.kdlab.kl_fused(s, t, 2.0, False, 1)
        (scaled,) = torch.autograd.grad(0.125 * loss2, s)  # upstream 0.125, applied in place
        weighted = kernels.kl_distillation(s, t, 2.0, weight=scale)  # the routed loss, a tensor weight
        weighted.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert returned.data_ptr() == grad.data_ptr() and scaled.data_ptr() == grad2.data_ptr()
    for got, factor in ((returned, 0.125), (scaled, 0.125), (s.grad, 0.5)):
        assert torch.allclose(got.float(), factor * ref_grad, rtol=rtol, atol=atol * ref_grad.abs().max().item())


def test_weight_tensors_from_the_cpu_or_with_a_gradient():
    """A CPU weight tensor is copied to the logits' GPU; one that requires a gradient takes the formula, which
    gives it its gradient."""
    g = torch.Generator(device="cuda").manual_seed(12)
    s = torch.randn(8, 16, 4, 4, generator=g, device="cuda", requires_grad=True)
    t = torch.randn(8, 16, 4, 4, generator=g, device="cuda")
    from kdlab import losses
    formula = losses.kl_distillation(s, t, 2.0).detach()
    assert torch.allclose(kernels.kl_distillation(s, t, 2.0, weight=torch.tensor(0.5)), 0.5 * formula, rtol=1e-4)
    w = torch.tensor(0.5, device="cuda", requires_grad=True)
    kernels.kl_distillation(s, t, 2.0, weight=w).backward()
    assert torch.allclose(w.grad, formula, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_logits_are_read_in_place(dtype):
    """[N, K, H, W] stored channels-last (class axis innermost) takes the rows kernel without a copy and
    gets a channels-last gradient, as the fake kernel under torch.compile says."""
    g = torch.Generator(device="cuda").manual_seed(9)
    s, t = ((3 * torch.randn(4, 64, 9, 9, generator=g, device="cuda")).to(dtype)
            .contiguous(memory_format=torch.channels_last) for _ in range(2))
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, False)
    ref_loss, ref_grad = reference.kl_fused(*_ref_inputs(s, t), 2.0, False)
    rtol, atol = TOL[dtype]
    assert grad.stride() == s.stride()
    assert torch.allclose(loss, ref_loss, rtol=rtol, atol=atol * ref_loss.abs().max().item() + 1e-6)
    assert torch.allclose(grad.float(), ref_grad, rtol=rtol, atol=atol * ref_grad.abs().max().item() + 1e-6)
    torch.library.opcheck(torch.ops.kdlab.kl_fused.default, (s.requires_grad_(True), t, 2.0, False, 1))


def test_large_shapes_have_no_limit():
    """No shared-memory limit: H W = 128 x 128 and a 65,535-class vocabulary."""
    g = torch.Generator(device="cuda").manual_seed(7)
    fs = torch.randn(2, 8, 128, 128, generator=g, device="cuda")
    ft = torch.randn(2, 16, 128, 128, generator=g, device="cuda")
    loss, grad = torch.ops.kdlab.attention_fused(fs, ft, 2.0)
    ref_loss, ref_grad = reference.attention_fused(fs, ft, 2.0)
    assert torch.allclose(loss, ref_loss, rtol=1e-4) and torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-9)
    s, t = torch.randn(3, 65535, generator=g, device="cuda"), torch.randn(3, 65535, generator=g, device="cuda")
    loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, True)
    ref_loss, ref_grad = reference.kl_fused(s, t, 2.0, True)
    assert torch.allclose(loss, ref_loss, rtol=1e-4) and torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-9)


def test_samples_beyond_32_bit_offsets_are_refused_by_the_op_and_take_the_formula():
    """(K + 64) H W >= 2^31 in the positions-innermost layout: the CUDA op refuses it with a clear error; the
    routed loss computes it with the formula (bf16 [1, 2, 2^25]: 128 MiB a tensor)."""
    if kernels.backend() != "cuda":
        pytest.skip("a limit of the CUDA kernels")
    s = torch.randn(1, 2, 2 ** 25, device="cuda", dtype=torch.bfloat16)
    t = torch.randn(1, 2, 2 ** 25, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="32-bit offsets"):
        torch.ops.kdlab.kl_fused(s, t, 2.0, False, 1)
    x = s.clone().requires_grad_(True)
    loss = kernels.kl_distillation(x, t, 2.0)
    loss.backward()
    assert type(loss.grad_fn).__name__ != "CppFunction" and torch.isfinite(x.grad).all()


def test_kernels_run_on_a_side_stream_and_inside_a_cuda_graph():
    """The launchers use the current stream; a captured forward + backward replays with new inputs."""
    g = torch.Generator(device="cuda").manual_seed(10)
    s, t = torch.randn(8, 64, 8, 8, generator=g, device="cuda"), torch.randn(8, 64, 8, 8, generator=g, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        loss, grad = torch.ops.kdlab.kl_fused(s, t, 2.0, False, 1)
    torch.cuda.current_stream().wait_stream(side)
    ref_loss, ref_grad = reference.kl_fused(s, t, 2.0, False, 1)
    assert torch.allclose(loss, ref_loss, rtol=1e-5) and torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-9)
    static_s = s.clone().requires_grad_(True)
    static_t = t.clone()
    for _ in range(2):  # warm up on a side stream, as torch.cuda.graph requires
        with torch.cuda.stream(side):
            kernels.kl_distillation(static_s, static_t, 2.0).backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    static_s.grad = None
    with torch.cuda.graph(graph):
        static_loss = kernels.kl_distillation(static_s, static_t, 2.0)
        static_loss.backward()
    new_s, new_t = torch.randn_like(s), torch.randn_like(t)
    with torch.no_grad():
        static_s.copy_(new_s)
        static_t.copy_(new_t)
    graph.replay()
    torch.cuda.synchronize()
    ref_loss, ref_grad = reference.kl_fused(new_s, new_t, 2.0, False, 1)
    assert torch.allclose(static_loss, ref_loss, rtol=1e-5)
    assert torch.allclose(static_s.grad, ref_grad, rtol=1e-4, atol=1e-9)


def test_compiled_forward_and_backward_match_the_reference():
    """torch.compile(fullgraph=True) around a weighted loss, the backward compiled too."""
    g = torch.Generator(device="cuda").manual_seed(11)
    s = torch.randn(16, 32, 6, 6, generator=g, device="cuda", requires_grad=True)
    t = torch.randn(16, 32, 6, 6, generator=g, device="cuda")
    fs = torch.randn(4, 8, 16, 16, generator=g, device="cuda", requires_grad=True)
    ft = torch.randn(4, 16, 16, 16, generator=g, device="cuda")

    def weighted(s, t, fs, ft):
        return 0.7 * kernels.kl_distillation(s, t, 2.0) + 0.3 * kernels.attention_transfer(fs, ft)

    compiled = torch.compile(weighted, fullgraph=True)
    compiled(s, t, fs, ft).backward()
    s_ref, fs_ref = s.detach().clone().requires_grad_(True), fs.detach().clone().requires_grad_(True)
    from kdlab import feature_losses, losses
    (0.7 * losses.kl_distillation(s_ref, t, 2.0) + 0.3 * feature_losses.attention_transfer(fs_ref, ft)).backward()
    assert torch.allclose(s.grad, s_ref.grad, rtol=1e-4, atol=1e-5 * s_ref.grad.abs().max().item())
    assert torch.allclose(fs.grad, fs_ref.grad, rtol=1e-4, atol=1e-5 * fs_ref.grad.abs().max().item())


def test_public_losses_run_the_cuda_kernels():
    from torch.profiler import ProfilerActivity, profile

    s, t = torch.randn(8, 32, 4, 4, device="cuda", requires_grad=True), torch.randn(8, 32, 4, 4, device="cuda")
    fs, ft = torch.randn(4, 8, 8, 8, device="cuda", requires_grad=True), torch.randn(4, 16, 8, 8, device="cuda")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        kernels.kl_distillation(s, t, 2.0).backward()
        kernels.attention_transfer(fs, ft).backward()
        torch.cuda.synchronize()
    names = " ".join(e.name for e in prof.events())
    expected = ("_kl_kernel", "_attention_maps_kernel", "_attention_grad_kernel") if kernels.backend() == "triton" else \
        ("kl_columns_kernel", "attention_maps_kernel", "attention_grad_kernel")
    assert all(name in names for name in expected), names[:2000]


def test_large_logits_and_masked_classes_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(8)
    shapes = [(64, 3), (64, 10), (8, 100, 4), (8, 400), (2, 3000, 3), (2, 20000)]
    for shape in shapes:  # rows, columns, streaming
        s = torch.randn(shape, generator=g, device="cuda") + 1e4
        t = torch.randn(shape, generator=g, device="cuda") - 1e4
        for reverse in (False, True):
            loss, grad = torch.ops.kdlab.kl_fused(s, t, 1.0, reverse)
            ref_loss, ref_grad = reference.kl_fused(s.double(), t.double(), 1.0, reverse)
            assert torch.allclose(loss.double(), ref_loss, rtol=1e-4, atol=1e-5)
            assert torch.allclose(grad.double(), ref_grad, rtol=1e-4, atol=1e-5)
    s = torch.tensor([[0.5, float("-inf"), 1.0, -0.3]], device="cuda")
    loss, grad = torch.ops.kdlab.kl_fused(s, torch.zeros_like(s), 1.0, True)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and grad[0, 1].item() == 0.0
