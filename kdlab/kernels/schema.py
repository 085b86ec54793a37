"""The schemas of kdlab's custom operators and their registrations for every backend: the
pure-PyTorch reference (:mod:`.reference`) as the composite implementation, fake (meta) kernels for
``torch.compile``, and the autograd formula (the forward already returns the student gradient).
The CUDA implementations register later, from ``ops.cpp``, when :mod:`.build` loads them (or the
Triton ones, from :mod:`.triton_ops`); the extension's ``autograd.cpp`` then registers the same autograd
formula in C++ for CUDA and CPU tensors, which takes precedence over this Python one (less host time a call)."""
from __future__ import annotations

import torch

from . import reference

_lib = None  # the torch.library.Library that owns the schemas, once defined


def define_ops() -> None:
    """Define the op schemas and their reference, fake and autograd registrations (once)."""
    global _lib
    if _lib is not None:
        return
    _lib = torch.library.Library("kdlab", "DEF")
    # reduction: 0 = none, 1 = mean, 2 = sum; the returned gradient is that of the (reduced) loss. Loss and gradient
    # are multiplied by weight and, if given, by weight_tensor's one float32 value, which the kernels read on the
    # device (an alpha of weighted distillation, a gradient scaler's scale): no extra pass, no host synchronisation
    _lib.define("kl_fused(Tensor student, Tensor teacher, float temperature, bool reverse, int reduction=0, "
                "float weight=1.0, Tensor? weight_tensor=None) -> (Tensor, Tensor)")
    _lib.define("attention_fused(Tensor student, Tensor teacher, float p, int reduction=0, float weight=1.0, "
                "Tensor? weight_tensor=None) -> (Tensor, Tensor)")
    # the backward of the reduced ops: grad *= factor (one value) in place, unless factor == 1, decided on the device
    _lib.define("apply_upstream_(Tensor(a!) grad, Tensor factor) -> ()")
    # the reference serves every backend without a dedicated kernel (CPU, MPS, CUDA before a build)
    _lib.impl("kl_fused", reference.kl_fused, "CompositeExplicitAutograd")
    _lib.impl("attention_fused", reference.attention_fused, "CompositeExplicitAutograd")
    _lib.impl("apply_upstream_", reference.apply_upstream_, "CompositeExplicitAutograd")

    @torch.library.register_fake("kdlab::kl_fused")
    def _kl_fake(student, teacher, temperature, reverse, reduction=0, weight=1.0, weight_tensor=None):
        shape = (student.shape[0], *student.shape[2:]) if reduction == 0 else ()
        loss = student.new_empty(shape, dtype=torch.promote_types(student.dtype, torch.float32))
        return loss, torch.empty_like(student, memory_format=reference.kl_grad_format(student, teacher))  # the kernels' layout

    @torch.library.register_fake("kdlab::attention_fused")
    def _at_fake(student, teacher, p, reduction=0, weight=1.0, weight_tensor=None):
        shape = (student.shape[0],) if reduction == 0 else ()
        return student.new_empty(shape, dtype=torch.promote_types(student.dtype, torch.float32)), student.new_empty(student.shape)

    @torch.library.register_fake("kdlab::apply_upstream_")
    def _apply_fake(grad, factor):
        return None

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
        if any(ctx.needs_input_grad[2:]):
            raise RuntimeError("kdlab's fused distillation ops give no gradient for weight_tensor: it is a constant "
                               "factor (detach it)")
        nones = (None,) * (ctx.n_inputs - 1)
        if grad_loss is None:  # the loss output was not used: no gradient flows
            return (None, *nones)
        eager = type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling()  # real tensors, not traced
        if ctx.reduced and eager and getattr(ctx, "scaled_in_place", False):
            raise RuntimeError("kdlab's fused distillation ops support one backward pass through a graph: the first "
                               "one scaled the saved gradient in place and handed it out (retain_graph=True and a "
                               "second backward); call the loss again, or set KDLAB_KERNELS=reference")
        (grad,) = ctx.saved_tensors
        acc = torch.promote_types(grad.dtype, torch.float32)
        if ctx.reduced:  # grad is already d loss / d student; the upstream gradient is one scalar, usually 1
            if eager:
                # in place, decided on the device: no pass over memory when the factor is 1, no host synchronisation
                ctx.scaled_in_place = True
                torch.ops.kdlab.apply_upstream_(grad, grad_loss.to(acc).reshape(()))
                return (grad, *nones)
            return ((grad * grad_loss.to(acc)).to(grad.dtype), *nones)
        extra = [1] * (grad.dim() - grad_loss.dim() - 1)  # KL: loss (N, *spatial); attention: loss (N,)
        scale = grad_loss.reshape(grad_loss.shape[0], 1, *grad_loss.shape[1:], *extra).to(acc)
        return ((grad * scale).to(grad.dtype), *nones)

    torch.library.register_autograd("kdlab::kl_fused", _backward,
                                    setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, 4))
    torch.library.register_autograd("kdlab::attention_fused", _backward,
                                    setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, 3))
