// Host-side argument checks shared by the CUDA launchers (kl.cu, attention.cu).
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace kdlab {

// The device pointer of an op's optional weight tensor (one float32 value on the inputs' device, read
// by the kernels: no host synchronisation), or nullptr when there is none.
inline const float* weight_pointer(const std::optional<at::Tensor>& weight, const at::Tensor& like, const char* op) {
  if (!weight.has_value()) return nullptr;
  const at::Tensor& w = *weight;
  TORCH_CHECK(w.numel() == 1 && w.scalar_type() == at::kFloat && w.device() == like.device(), op,
              ": weight_tensor must hold one float32 value on the inputs' device");
  return w.data_ptr<float>();
}

}  // namespace kdlab
