// The backward's upstream gradient without a host synchronisation (torch.ops.kdlab.apply_upstream_): the
// fused ops' forward already wrote d loss / d student; the backward must multiply it by the incoming
// gradient f (a scalar on the GPU). Reading f on the host would stall the CPU until the forward pass
// has run, so every thread reads it on the device instead and, when f == 1 (a loss summed with
// coefficient 1, or whose weight went into the op), returns at once: no pass over memory. Otherwise
// the gradient is scaled in place, one read and one write. The autograd formula (schema.py) calls this
// once per graph: a second backward through a retained graph is refused, since the saved gradient has
// been scaled and handed out.
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
__global__ void apply_upstream_kernel(scalar_t* __restrict__ grad, const float* __restrict__ factor, int64_t n) {
  const float f = *factor;
  if (f == 1.f) return;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    grad[i] = from_float<scalar_t>(to_float(grad[i]) * f);
}

void apply_upstream_cuda(at::Tensor grad, const at::Tensor& factor) {
  TORCH_CHECK(grad.is_cuda() && factor.device() == grad.device(), "apply_upstream_: expected CUDA tensors on one device");
  TORCH_CHECK(factor.numel() == 1 && factor.scalar_type() == at::kFloat, "apply_upstream_: factor must be one float32");
  TORCH_CHECK(grad.is_non_overlapping_and_dense(), "apply_upstream_: grad must be dense");
  const int64_t n = grad.numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(grad.device());
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, grad.get_device()));
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 8LL * sms);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_V2(grad.scalar_type(), "apply_upstream_", AT_WRAP([&] {
    apply_upstream_kernel<scalar_t><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        grad.data_ptr<scalar_t>(), factor.data_ptr<float>(), n);
  }), at::kFloat, at::kHalf, at::kBFloat16);
  C10_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kdlab
