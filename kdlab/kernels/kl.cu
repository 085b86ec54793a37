// Host side of the fused KL distillation op (torch.ops.kdlab.kl_fused): argument checks, launch
// configuration and dtype dispatch. The kernel itself is in kl_kernel.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch_v2.h>
#include <cstdlib>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "kl_kernel.cuh"

namespace kdlab {

// reduction: 0 = none (loss per position), 1 = mean, 2 = sum; the gradient is that of the reduced loss.
std::tuple<at::Tensor, at::Tensor> kl_fused_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                 double temperature, bool reverse, int64_t reduction) {
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "kl_fused: reduction must be 0 (none), 1 (mean) or 2 (sum)");
  TORCH_CHECK(student.is_cuda() && teacher.is_cuda(), "kl_fused: expected CUDA tensors");
  TORCH_CHECK(student.sizes() == teacher.sizes(), "kl_fused: student and teacher shapes differ");
  TORCH_CHECK(student.device() == teacher.device(), "kl_fused: student and teacher are on different devices");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "kl_fused: student and teacher dtypes differ");
  TORCH_CHECK(student.dim() >= 2 && student.size(1) >= 2, "kl_fused: expected logits [N, K, *spatial], K >= 2");
  TORCH_CHECK(student.scalar_type() != at::kDouble, "kl_fused: float64 logits use the reference implementation");
  const int64_t K64 = student.size(1);
  c10::cuda::CUDAGuard guard(student.device());
  const int max_shared = shared_limit_bytes(student.get_device());
  TORCH_CHECK(K64 <= kl_max_classes(max_shared), "kl_fused: K = ", K64, " exceeds the kernel's limit of ",
              kl_max_classes(max_shared), " on this GPU");
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const int64_t N = s.size(0);
  const int K = static_cast<int>(K64);
  int64_t HW = 1;  // product of the spatial sizes (not numel / (N K): N may be 0)
  std::vector<int64_t> loss_shape{N};
  for (int64_t d = 2; d < s.dim(); ++d) {
    loss_shape.push_back(s.size(d));
    HW *= s.size(d);
  }
  at::Tensor loss = at::empty(loss_shape, s.options().dtype(at::kFloat));
  at::Tensor grad = at::empty_like(s);
  if (s.numel() == 0) return {reduction == 0 ? loss : reduction == 1 ? loss.mean() : loss.sum(), grad};
  const char* tile = std::getenv("KDLAB_KL_TILE");  // benchmark tuning only: python -m kdlab.bench --tune
  const KlLaunch cfg = kl_launch_config(N, K, HW, tile ? std::atoi(tile) : 0, max_shared);
  const int TP = cfg.tile;
  const int64_t blocks = cfg.blocks;
  TORCH_CHECK(blocks < (1LL << 31), "kl_fused: too many positions");
  const size_t shmem = cfg.shared;
  const float temp = static_cast<float>(temperature), inv_temp = 1.f / temp;
  const float gtemp = kl_grad_scale(temp, reduction, N * HW);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_V2(s.scalar_type(), "kl_fused", AT_WRAP([&] {
    kl_dispatch<scalar_t>(reverse, HW, K, [&](auto kernel) {
      if (shmem > 48 * 1024) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shmem)));
      }
      kernel<<<static_cast<unsigned>(blocks), kThreads, shmem, stream>>>(
          s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), loss.data_ptr<float>(), grad.data_ptr<scalar_t>(),
          N, K, HW, TP, inv_temp, temp, gtemp);
    });
  }), at::kFloat, at::kHalf, at::kBFloat16);
  C10_CUDA_CHECK(cudaGetLastError());
  if (reduction == 1) return {loss.mean(), grad};  // torch reductions: deterministic, no atomics
  if (reduction == 2) return {loss.sum(), grad};
  return {loss, grad};
}

}  // namespace kdlab
