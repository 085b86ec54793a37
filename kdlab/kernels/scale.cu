// The backward's upstream gradient without a host synchronisation (torch.ops.kdlab.scale_unless_one_):
// the fused ops' forward already wrote d loss / d student; the backward must multiply it by the
// incoming gradient g (a scalar on the GPU). Reading g on the host would stall the CPU until the
// forward pass has run, so every thread reads it on the device instead and, when g == 1 (a loss
// that is summed with coefficient 1, or whose weight went into the op), returns at once: no pass
// over memory. Otherwise the gradient is scaled in place, one read and one write.
#include <ATen/ATen.h>
#include <ATen/Dispatch_v2.h>
#include <algorithm>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common.cuh"

namespace kdlab {

// grad: n values (any dense layout: scaled as flat storage); factor: one float on the device.
template <typename scalar_t>
__global__ void scale_unless_one_kernel(scalar_t* __restrict__ grad, const float* __restrict__ factor, int64_t n) {
  const float f = *factor;
  if (f == 1.f) return;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    grad[i] = from_float<scalar_t>(to_float(grad[i]) * f);
}

void scale_unless_one_cuda(at::Tensor grad, const at::Tensor& factor) {
  TORCH_CHECK(grad.is_cuda() && factor.is_cuda() && grad.device() == factor.device(),
              "scale_unless_one_: expected CUDA tensors on one device");
  TORCH_CHECK(factor.numel() == 1 && factor.scalar_type() == at::kFloat, "scale_unless_one_: factor must be one float32");
  TORCH_CHECK(grad.is_non_overlapping_and_dense(), "scale_unless_one_: grad must be dense");
  const int64_t n = grad.numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(grad.device());
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, grad.get_device()));
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 8LL * sms);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_V2(grad.scalar_type(), "scale_unless_one_", AT_WRAP([&] {
    scale_unless_one_kernel<scalar_t><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        grad.data_ptr<scalar_t>(), factor.data_ptr<float>(), n);
  }), at::kFloat, at::kHalf, at::kBFloat16);
  C10_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kdlab
