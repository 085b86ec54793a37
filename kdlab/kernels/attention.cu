// Host side of the fused attention-transfer op (torch.ops.kdlab.attention_fused): argument checks,
// launch configuration and dtype dispatch. The kernel itself is in attention_kernel.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch_v2.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "attention_kernel.cuh"
#include "op_args.h"

namespace kdlab {

// reduction: 0 = none (loss per sample), 1 = mean, 2 = sum; the gradient is that of the reduced loss.
// Both are multiplied by weight and by weight_tensor's value when given (read on the device).
std::tuple<at::Tensor, at::Tensor> attention_fused_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                        double p, int64_t reduction, double weight,
                                                        const std::optional<at::Tensor>& weight_tensor) {
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "attention_fused: reduction must be 0 (none), 1 (mean) or 2 (sum)");
  TORCH_CHECK(student.is_cuda() && teacher.is_cuda(), "attention_fused: expected CUDA tensors");
  TORCH_CHECK(student.dim() == 4 && teacher.dim() == 4, "attention_fused: expected features [N, C, H, W]");
  TORCH_CHECK(student.size(0) == teacher.size(0) && student.size(2) == teacher.size(2) &&
                  student.size(3) == teacher.size(3),
              "attention_fused: batch and spatial sizes must match");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "attention_fused: student and teacher dtypes differ");
  TORCH_CHECK(student.device() == teacher.device(), "attention_fused: student and teacher are on different devices");
  TORCH_CHECK(student.scalar_type() != at::kDouble, "attention_fused: float64 features use the reference implementation");
  c10::cuda::CUDAGuard guard(student.device());
  TORCH_CHECK(student.size(1) < (1LL << 31) && teacher.size(1) < (1LL << 31), "attention_fused: too many channels");
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const int64_t N = s.size(0), HW = s.size(2) * s.size(3);
  at::Tensor loss = at::empty({N}, s.options().dtype(at::kFloat));
  at::Tensor grad = at::empty_like(s);
  if (s.numel() == 0) {  // N = 0, or no positions or channels (N > 0): nothing to compare, loss 0
    loss.zero_();
    return {reduction == 0 ? loss : reduction == 1 ? loss.mean() : loss.sum(), grad};
  }
  TORCH_CHECK(attention_blocks(N, HW) < (1LL << 31), "attention_fused: too many positions for one launch");
  const int Cs = static_cast<int>(s.size(1)), Ct = static_cast<int>(t.size(1));
  at::Tensor maps = at::empty({2, N, HW}, s.options().dtype(at::kFloat));
  at::Tensor stats = at::empty({N, 3}, s.options().dtype(at::kFloat));
  const float pf = static_cast<float>(p), gscale = attention_grad_scale(reduction, N), w = static_cast<float>(weight);
  const float* w_ptr = weight_pointer(weight_tensor, s, "attention_fused");
  const auto blocks = static_cast<unsigned>(attention_blocks(N, HW));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_V2(s.scalar_type(), "attention_fused", AT_WRAP([&] {
    attention_maps_kernel<scalar_t><<<blocks, kAtWarps * 32, 2 * kAtWarps * 32 * sizeof(float), stream>>>(
        s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), maps.data_ptr<float>(), N, Cs, Ct, HW, pf);
    C10_CUDA_CHECK(cudaGetLastError());
    attention_stats_kernel<<<static_cast<unsigned>(N), attention_stats_threads(HW), 32 * sizeof(float), stream>>>(
        maps.data_ptr<float>(), loss.data_ptr<float>(), stats.data_ptr<float>(), N, HW, w, w_ptr);
    C10_CUDA_CHECK(cudaGetLastError());
    attention_grad_kernel<scalar_t><<<blocks, kAtWarps * 32, 0, stream>>>(
        s.data_ptr<scalar_t>(), maps.data_ptr<float>(), stats.data_ptr<float>(), grad.data_ptr<scalar_t>(), N, Cs,
        HW, pf, gscale, w, w_ptr);
  }), at::kFloat, at::kHalf, at::kBFloat16);
  C10_CUDA_CHECK(cudaGetLastError());
  if (reduction == 1) return {loss.mean(), grad};
  if (reduction == 2) return {loss.sum(), grad};
  return {loss, grad};
}

}  // namespace kdlab
