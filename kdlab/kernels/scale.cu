// The backward's upstream gradient without a host synchronisation (torch.ops.kdlab.apply_upstream_): the
// fused ops' forward already wrote d loss / d student; the backward must multiply it by the incoming
// gradient f (a scalar on the GPU). Reading f on the host would stall the CPU until the forward pass
// has run, so every thread reads it on the device instead. The gradient tensor holds `applied` times
// d loss / d student (applied = 1 after the forward, f after a backward, so that a second backward
// through a retained graph rescales rather than scaling twice): when f == applied (the usual f = 1 of
// a loss summed with coefficient 1, or whose weight went into the op), every thread returns at once
// and no memory is touched; otherwise the gradient is multiplied by f / applied in place, one read and
// one write. `applied` is then set to f by a copy on the same stream, after every block has read it.
#include <ATen/ATen.h>
#include <ATen/Dispatch_v2.h>
#include <algorithm>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common.cuh"

namespace kdlab {

// grad: n values (any dense layout: scaled as flat storage); factor, applied: one float each on the device.
template <typename scalar_t>
__global__ void apply_upstream_kernel(scalar_t* __restrict__ grad, const float* __restrict__ factor,
                                      const float* __restrict__ applied, int64_t n) {
  const float f = *factor, a = *applied;
  if (f == a) return;
  const float ratio = f / a;  // a = 0 (a previous backward with upstream 0) cannot be undone: inf or NaN
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    grad[i] = from_float<scalar_t>(to_float(grad[i]) * ratio);
}

void apply_upstream_cuda(at::Tensor grad, const at::Tensor& factor, at::Tensor applied) {
  TORCH_CHECK(grad.is_cuda() && factor.device() == grad.device() && applied.device() == grad.device(),
              "apply_upstream_: expected CUDA tensors on one device");
  TORCH_CHECK(factor.numel() == 1 && factor.scalar_type() == at::kFloat && applied.numel() == 1 &&
                  applied.scalar_type() == at::kFloat, "apply_upstream_: factor and applied must be one float32 each");
  TORCH_CHECK(grad.is_non_overlapping_and_dense(), "apply_upstream_: grad must be dense");
  const int64_t n = grad.numel();
  c10::cuda::CUDAGuard guard(grad.device());
  if (n > 0) {
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, grad.get_device()));
    const int64_t blocks = std::min<int64_t>((n + 255) / 256, 8LL * sms);
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_V2(grad.scalar_type(), "apply_upstream_", AT_WRAP([&] {
      apply_upstream_kernel<scalar_t><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
          grad.data_ptr<scalar_t>(), factor.data_ptr<float>(), applied.data_ptr<float>(), n);
    }), at::kFloat, at::kHalf, at::kBFloat16);
    C10_CUDA_CHECK(cudaGetLastError());
  }
  applied.copy_(factor.reshape_as(applied));  // same stream, after the kernel
}

}  // namespace kdlab
