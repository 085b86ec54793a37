// The fused ops' autograd in C++ (registered for AutogradCUDA and AutogradCPU when the extension loads): the
// same formula as schema.py's Python registration, which still serves every backend before a build and the
// Triton kernels. Python's wrapper cost a fused forward + backward about 30 us of host time on a
// development CPU (torch.library's per-call filling of default arguments alone 12 us), and the op's own
// kernel is a few microseconds at small shapes.
//
// Forward: the op below autograd returns (loss, d loss / d student). The autograd Function's one output is
// the loss; the gradient is saved for the backward and handed back beside it without a grad_fn (as if
// marked non-differentiable, which compiled autograd does not support for C++ Functions). Backward, with g
// the incoming gradient of the loss:
//   reduced loss (mean or sum inside the op): d/ds = g * grad, g one value. On real tensors (eager),
//     apply_upstream_ scales the saved gradient in place, on the device, only when g != 1: no host
//     synchronisation, and no pass over memory in the usual case g = 1. While tracing (FakeTensor,
//     functionalization: the Python or Functionalize dispatch keys) it multiplies out of place.
//   per-position loss [N, *spatial] (KL) or per-sample [N] (attention): d/ds = g broadcast over the
//     class (channel) axis times grad, out of place.
// Refused with the Python registration's messages: create_graph=True, a teacher or weight_tensor that
// required a gradient when the forward ran (as Python's ctx.needs_input_grad; the C++ context's
// needs_input_grad asks whether this backward computes it, which torch.autograd.grad(loss, student)
// does not), and a second backward through a retained graph after the in-place scaling.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace kdlab {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kCreateGraph =
    "kdlab's fused distillation ops support one backward pass only, not create_graph=True (double backward, e.g. a "
    "gradient penalty through this loss); set KDLAB_KERNELS=reference so the public losses use plain autograd";
constexpr const char* kTeacher =
    "kdlab's fused distillation ops give no gradient for the teacher input: teachers are frozen (detach the "
    "teacher tensor or use requires_grad=False)";
constexpr const char* kWeightTensor =
    "kdlab's fused distillation ops give no gradient for weight_tensor: it is a constant factor (detach it)";
constexpr const char* kTwice =
    "kdlab's fused distillation ops support one backward pass through a graph: the first one scaled the saved "
    "gradient in place and handed it out (retain_graph=True and a second backward); call the loss again, or set "
    "KDLAB_KERNELS=reference";

// A real tensor, not one being traced by torch.compile or a subclass.
bool eager(const at::Tensor& x) {
  return !x.key_set().has_any(c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize}));
}

// What both ops' forwards keep: the gradient, whether the loss was reduced, and whether the teacher and the
// weight tensor required a gradient.
void save(AutogradContext* ctx, const at::Tensor& grad, int64_t reduction, const at::Tensor& teacher,
          const std::optional<at::Tensor>& weight_tensor) {
  ctx->save_for_backward({grad});
  ctx->set_materialize_grads(false);
  ctx->saved_data["reduced"] = reduction != 0;
  ctx->saved_data["teacher_requires_grad"] = teacher.requires_grad();
  ctx->saved_data["weight_requires_grad"] = weight_tensor.has_value() && weight_tensor->defined() &&
                                            weight_tensor->requires_grad();
}

// The backward of either op; n_inputs: its forward's argument count (the op's, plus the gradient's out-pointer).
variable_list fused_backward(AutogradContext* ctx, const variable_list& grads, size_t n_inputs) {
  TORCH_CHECK(!at::GradMode::is_enabled(), kCreateGraph);
  TORCH_CHECK(!ctx->saved_data["teacher_requires_grad"].toBool(), kTeacher);
  TORCH_CHECK(!ctx->saved_data["weight_requires_grad"].toBool(), kWeightTensor);
  variable_list out(n_inputs);
  const at::Tensor& g = grads[0];
  if (!g.defined()) return out;  // the loss output was not used: no gradient flows
  const bool reduced = ctx->saved_data["reduced"].toBool(), in_place = reduced && eager(g);
  TORCH_CHECK(!(in_place && ctx->saved_data.count("scaled_in_place")), kTwice);  // before the saved gradient is read
  at::Tensor grad = ctx->get_saved_variables()[0];
  const at::ScalarType acc = at::promote_types(grad.scalar_type(), at::kFloat);
  if (in_place) {
    ctx->saved_data["scaled_in_place"] = true;
    static const auto apply_upstream = c10::Dispatcher::singleton()
        .findSchemaOrThrow("kdlab::apply_upstream_", "")
        .typed<void(at::Tensor, const at::Tensor&)>();
    apply_upstream.call(grad, g.to(acc).reshape({}));
    out[0] = grad;
    return out;
  }
  at::Tensor upstream = g;  // a scalar when reduced
  if (!reduced) {  // g: [N, *spatial] (KL) or [N] (attention) -> [N, 1, *spatial, 1...], broadcast over the classes
    std::vector<int64_t> shape{g.size(0), 1};
    for (int64_t d = 1; d < g.dim(); ++d) shape.push_back(g.size(d));
    while (static_cast<int64_t>(shape.size()) < grad.dim()) shape.push_back(1);
    upstream = g.reshape(shape);
  }
  out[0] = (grad * upstream.to(acc)).to(grad.scalar_type());
  return out;
}

// forward(..., grad_out): returns {loss}; *grad_out = the gradient (no grad_fn).
struct KlFused : public torch::autograd::Function<KlFused> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher,
                               double temperature, bool reverse, int64_t reduction, double weight,
                               const std::optional<at::Tensor>& weight_tensor, at::Tensor* grad_out) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("kdlab::kl_fused", "").typed<
        std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double, bool, int64_t, double,
                                           const std::optional<at::Tensor>&)>();
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, grad] = op.call(student, teacher, temperature, reverse, reduction, weight, weight_tensor);
    save(ctx, grad, reduction, teacher, weight_tensor);
    *grad_out = grad;
    return {loss};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return fused_backward(ctx, grads, 8); }
};

struct AttentionFused : public torch::autograd::Function<AttentionFused> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher, double p,
                               int64_t reduction, double weight, const std::optional<at::Tensor>& weight_tensor,
                               at::Tensor* grad_out) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("kdlab::attention_fused", "").typed<
        std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double, int64_t, double,
                                           const std::optional<at::Tensor>&)>();
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, grad] = op.call(student, teacher, p, reduction, weight, weight_tensor);
    save(ctx, grad, reduction, teacher, weight_tensor);
    *grad_out = grad;
    return {loss};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return fused_backward(ctx, grads, 7); }
};

std::tuple<at::Tensor, at::Tensor> kl_fused_autograd(const at::Tensor& student, const at::Tensor& teacher,
                                                     double temperature, bool reverse, int64_t reduction, double weight,
                                                     const std::optional<at::Tensor>& weight_tensor) {
  at::Tensor grad;
  auto out = KlFused::apply(student, teacher, temperature, reverse, reduction, weight, weight_tensor, &grad);
  return {out[0], grad};
}

std::tuple<at::Tensor, at::Tensor> attention_fused_autograd(const at::Tensor& student, const at::Tensor& teacher,
                                                            double p, int64_t reduction, double weight,
                                                            const std::optional<at::Tensor>& weight_tensor) {
  at::Tensor grad;
  auto out = AttentionFused::apply(student, teacher, p, reduction, weight, weight_tensor, &grad);
  return {out[0], grad};
}

}  // namespace
}  // namespace kdlab

TORCH_LIBRARY_IMPL(kdlab, AutogradCUDA, m) {
  m.impl("kl_fused", &kdlab::kl_fused_autograd);
  m.impl("attention_fused", &kdlab::attention_fused_autograd);
}

TORCH_LIBRARY_IMPL(kdlab, AutogradCPU, m) {
  m.impl("kl_fused", &kdlab::kl_fused_autograd);
  m.impl("attention_fused", &kdlab::attention_fused_autograd);
}
