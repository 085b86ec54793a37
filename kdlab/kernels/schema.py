"""The schemas of kdlab's two custom operators and their registrations for every backend: the
pure-PyTorch reference (:mod:`.reference`) as the composite implementation, fake (meta) kernels for
``torch.compile``, and the autograd formula (the forward already returns the student gradient).
The CUDA implementations register later, from ``ops.cpp``, when :mod:`.build` loads them."""
from __future__ import annotations

import torch

from . import reference

# CUDA gradients at least this large skip the backward's multiply when the upstream gradient is 1, at the
# cost of one host synchronisation; reading and writing 32 MiB at ~3 TB/s takes about as long (~20 us)
CHECK_UPSTREAM_ONE_BYTES = 32 * 2 ** 20

_lib = None  # the torch.library.Library that owns the schemas, once defined


def define_ops() -> None:
    """Define the op schemas and their reference, fake and autograd registrations (once)."""
    global _lib
    if _lib is not None:
        return
    _lib = torch.library.Library("kdlab", "DEF")
    # reduction: 0 = none, 1 = mean, 2 = sum; the returned gradient is that of the (reduced) loss
    _lib.define("kl_fused(Tensor student, Tensor teacher, float temperature, bool reverse, int reduction=0) -> (Tensor, Tensor)")
    _lib.define("attention_fused(Tensor student, Tensor teacher, float p, int reduction=0) -> (Tensor, Tensor)")
    # the reference serves every backend without a dedicated kernel (CPU, MPS, CUDA before a build)
    _lib.impl("kl_fused", reference.kl_fused, "CompositeExplicitAutograd")
    _lib.impl("attention_fused", reference.attention_fused, "CompositeExplicitAutograd")

    @torch.library.register_fake("kdlab::kl_fused")
    def _kl_fake(student, teacher, temperature, reverse, reduction=0):
        shape = (student.shape[0], *student.shape[2:]) if reduction == 0 else ()
        loss = student.new_empty(shape, dtype=torch.promote_types(student.dtype, torch.float32))
        return loss, torch.empty_like(student, memory_format=reference.kl_grad_format(student, teacher))  # the kernels' layout

    @torch.library.register_fake("kdlab::attention_fused")
    def _at_fake(student, teacher, p, reduction=0):
        shape = (student.shape[0],) if reduction == 0 else ()
        return student.new_empty(shape, dtype=torch.promote_types(student.dtype, torch.float32)), student.new_empty(student.shape)

    def _setup(ctx, inputs, output, reduction_index):
        ctx.reduced = len(inputs) > reduction_index and inputs[reduction_index] != 0  # mean or sum in the op
        ctx.n_inputs = len(inputs)
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the (non-differentiable) grad output

    def _backward(ctx, grad_loss, _grad_of_grad):
        if torch.is_grad_enabled():  # create_graph=True: the gradient would silently lack its own gradient
            raise RuntimeError("kdlab's fused distillation ops support one backward pass only, not create_graph=True "
                               "(double backward, e.g. a gradient penalty through this loss); set "
                               "KDLAB_KERNELS=reference so the public losses use plain autograd")
        if ctx.needs_input_grad[1]:
            raise RuntimeError("kdlab's fused distillation ops give no gradient for the teacher input: teachers "
                               "are frozen (detach the teacher tensor or use requires_grad=False)")
        nones = (None,) * (ctx.n_inputs - 1)
        if grad_loss is None:  # the loss output was not used: no gradient flows
            return (None, *nones)
        (grad,) = ctx.saved_tensors
        acc = torch.promote_types(grad.dtype, torch.float32)
        if ctx.reduced:  # grad is already d loss / d student; the upstream gradient is a scalar, usually 1
            eager = type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling()  # not traced (fake) tensors
            # on a GPU the check copies a scalar to the host (a synchronisation, some 10-20 us); worth it only when
            # the multiply it saves, a pass over the gradient, costs more
            worth = not grad.is_cuda or (grad.numel() * grad.element_size() >= CHECK_UPSTREAM_ONE_BYTES
                                         and not torch.cuda.is_current_stream_capturing())  # no .item() in a graph
            if eager and worth and not grad_loss.requires_grad and grad_loss.item() == 1.0:
                return (grad, *nones)  # no extra pass over memory
            return ((grad * grad_loss.to(acc)).to(grad.dtype), *nones)
        extra = [1] * (grad.dim() - grad_loss.dim() - 1)  # KL: loss (N, *spatial); attention: loss (N,)
        scale = grad_loss.reshape(grad_loss.shape[0], 1, *grad_loss.shape[1:], *extra).to(acc)
        return ((grad * scale).to(grad.dtype), *nones)

    torch.library.register_autograd("kdlab::kl_fused", _backward,
                                    setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, 4))
    torch.library.register_autograd("kdlab::attention_fused", _backward,
                                    setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, 3))
