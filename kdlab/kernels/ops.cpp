// Registers the CUDA implementations of kdlab's fused ops with the PyTorch dispatcher. The op
// schemas (and the CPU reference, fake and autograd registrations) are defined in Python in
// kdlab/kernels/__init__.py before this library is loaded.
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace kdlab {
std::tuple<at::Tensor, at::Tensor> kl_fused_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                 double temperature, bool reverse, int64_t reduction, double weight,
                                                 const std::optional<at::Tensor>& weight_tensor);
std::tuple<at::Tensor, at::Tensor> attention_fused_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                        double p, int64_t reduction, double weight,
                                                        const std::optional<at::Tensor>& weight_tensor);
void apply_upstream_cuda(at::Tensor grad, const at::Tensor& factor);
}  // namespace kdlab

TORCH_LIBRARY_IMPL(kdlab, CUDA, m) {
  m.impl("kl_fused", &kdlab::kl_fused_cuda);
  m.impl("attention_fused", &kdlab::attention_fused_cuda);
  m.impl("apply_upstream_", &kdlab::apply_upstream_cuda);
}
