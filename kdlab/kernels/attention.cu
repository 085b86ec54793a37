// Fused attention transfer: per sample, the channel reduction a = mean_c |F|^p of student and
// teacher features, the L2 normalisation, the distance and the gradient with respect to the
// student features (see reference.py for the formulas), in one kernel launch.
//
// Layout: features [N, C, H, W] contiguous; one block per sample, one thread per spatial position
// (looping when HW > blockDim). The channel axis is not innermost, so a thread walks its column
// with stride HW while neighbouring threads read neighbouring positions: every load is coalesced.
// The per-sample norms and dot products are block reductions in shared memory in a fixed order
// (deterministic, no atomics). Global traffic: read F_S twice (maps, then gradient), F_T once,
// write the gradient once.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace kdlab {

constexpr int kAtThreads = 1024;
constexpr int kAtMaxPositions = 8192;  // two float maps of HW in shared memory (64 KiB)

template <typename scalar_t>
__device__ __forceinline__ float abs_pow(scalar_t x, float p, bool square) {
  const float v = static_cast<float>(x);
  return square ? v * v : powf(fabsf(v), p);
}

// Sum of v over the block, identical on every thread; `red` holds blockDim.x / 32 floats.
__device__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // `red` may still be read from a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < warps; ++w) total += red[w];  // fixed order
  return total;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kAtThreads) attention_fused_kernel(
    const scalar_t* __restrict__ fs, const scalar_t* __restrict__ ft, float* __restrict__ loss,
    scalar_t* __restrict__ grad, int Cs, int Ct, int HW, float p, float gscale) {
  extern __shared__ float smem[];
  float* a_s = smem;        // (HW,)
  float* a_t = smem + HW;   // (HW,)
  float* red = smem + 2 * HW;
  const bool square = p == 2.f;
  const int64_t n = blockIdx.x;
  const scalar_t* xs = fs + n * Cs * static_cast<int64_t>(HW);
  const scalar_t* xt = ft + n * Ct * static_cast<int64_t>(HW);
  float ss = 0.f, st = 0.f;
  for (int j = threadIdx.x; j < HW; j += blockDim.x) {
    float as = 0.f, at = 0.f;
    for (int c = 0; c < Cs; ++c) as += abs_pow(xs[static_cast<int64_t>(c) * HW + j], p, square);
    for (int c = 0; c < Ct; ++c) at += abs_pow(xt[static_cast<int64_t>(c) * HW + j], p, square);
    as /= Cs;
    at /= Ct;
    a_s[j] = as;
    a_t[j] = at;
    ss += as * as;
    st += at * at;
  }
  const float norm_s = fmaxf(sqrtf(block_sum(ss, red)), 1e-12f);
  const float norm_t = fmaxf(sqrtf(block_sum(st, red)), 1e-12f);
  float dd = 0.f, ud = 0.f;
  for (int j = threadIdx.x; j < HW; j += blockDim.x) {
    const float u = a_s[j] / norm_s, d = u - a_t[j] / norm_t;
    dd += d * d;
    ud += u * d;
  }
  dd = block_sum(dd, red);
  ud = block_sum(ud, red);
  if (threadIdx.x == 0) loss[n] = dd;
  scalar_t* g = grad + n * Cs * static_cast<int64_t>(HW);
  const float inv_cs = gscale / Cs;  // d a_S[j] / d F_S[c, j] = p |F|^(p-1) sign(F) / C_S
  for (int j = threadIdx.x; j < HW; j += blockDim.x) {
    const float u = a_s[j] / norm_s, d = u - a_t[j] / norm_t;
    const float g_a = 2.f * (d - u * ud) / norm_s;  // d loss / d a_S[j]
    for (int c = 0; c < Cs; ++c) {
      const int64_t off = static_cast<int64_t>(c) * HW + j;
      const float x = static_cast<float>(xs[off]);
      const float dx = square ? 2.f * x : p * powf(fabsf(x), p - 1.f) * ((x > 0.f) - (x < 0.f));
      g[off] = static_cast<scalar_t>(g_a * dx * inv_cs);
    }
  }
}

// reduction: 0 = none (loss per sample), 1 = mean, 2 = sum; the gradient is that of the reduced loss.
std::tuple<at::Tensor, at::Tensor> attention_fused_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                        double p, int64_t reduction) {
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "attention_fused: reduction must be 0 (none), 1 (mean) or 2 (sum)");
  TORCH_CHECK(student.is_cuda() && teacher.is_cuda(), "attention_fused: expected CUDA tensors");
  TORCH_CHECK(student.dim() == 4 && teacher.dim() == 4, "attention_fused: expected features [N, C, H, W]");
  TORCH_CHECK(student.size(0) == teacher.size(0) && student.size(2) == teacher.size(2) &&
                  student.size(3) == teacher.size(3),
              "attention_fused: batch and spatial sizes must match");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "attention_fused: student and teacher dtypes differ");
  TORCH_CHECK(student.device() == teacher.device(), "attention_fused: student and teacher are on different devices");
  TORCH_CHECK(student.scalar_type() != at::kDouble, "attention_fused: float64 features use the reference implementation");
  const int64_t HW64 = student.size(2) * student.size(3);
  TORCH_CHECK(HW64 <= kAtMaxPositions, "attention_fused: H*W = ", HW64, " exceeds the kernel's limit of ",
              kAtMaxPositions);
  c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const int64_t N = s.size(0);
  at::Tensor loss = at::empty({N}, s.options().dtype(at::kFloat));
  at::Tensor grad = at::empty_like(s);
  if (s.numel() == 0) return {reduction == 0 ? loss : reduction == 1 ? loss.mean() : loss.sum(), grad};
  const int HW = static_cast<int>(HW64);
  const float gscale = reduction == 1 ? 1.f / static_cast<float>(N) : 1.f;
  const int threads = static_cast<int>(std::min<int64_t>(kAtThreads, ((HW64 + 31) / 32) * 32));
  const size_t shmem = (2 * static_cast<size_t>(HW) + threads / 32) * sizeof(float);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "attention_fused", [&] {
    auto kernel = attention_fused_kernel<scalar_t>;
    if (shmem > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(shmem)));
    }
    kernel<<<static_cast<unsigned>(N), threads, shmem, stream>>>(
        s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), loss.data_ptr<float>(), grad.data_ptr<scalar_t>(),
        static_cast<int>(s.size(1)), static_cast<int>(t.size(1)), HW, static_cast<float>(p), gscale);
  });
  C10_CUDA_CHECK(cudaGetLastError());
  if (reduction == 1) return {loss.mean(), grad};
  if (reduction == 2) return {loss.sum(), grad};
  return {loss, grad};
}

}  // namespace kdlab
