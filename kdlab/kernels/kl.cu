// Fused KL distillation over per-class logits: loss per position and its gradient with respect to
// the student logits in one pass over memory (see reference.py for the formulas).
//
// Layout: logits [N, K, *spatial] contiguous, class axis 1, HW = prod(spatial) (HW = 1 for [N, K]).
// A block owns a tile of TP positions: it reads the tile's student and teacher logits from global
// memory once (coalesced along the innermost axis), keeps them in shared memory as floats, and one
// warp per position computes the max, log-sum-exp, KL and gradient with warp shuffles (a fixed
// reduction order: deterministic, no atomics). The gradient overwrites the tile in shared memory and
// is written back with the same coalesced pattern. Global traffic: read s, read t, write grad, write
// one float per position.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace kdlab {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSharedBytes = 96 * 1024;

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename scalar_t>
__device__ __forceinline__ float load_f(const scalar_t* p) { return static_cast<float>(*p); }

template <typename scalar_t>
__device__ __forceinline__ scalar_t from_f(float v) { return static_cast<scalar_t>(v); }
template <>
__device__ __forceinline__ at::Half from_f<at::Half>(float v) { return at::Half(__float2half_rn(v)); }
template <>
__device__ __forceinline__ at::BFloat16 from_f<at::BFloat16>(float v) { return at::BFloat16(v); }

template <typename scalar_t, bool kReverse, bool kRows>
__global__ void __launch_bounds__(kThreads) kl_fused_kernel(
    const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, float* __restrict__ loss,
    scalar_t* __restrict__ grad, int64_t N, int K, int64_t HW, int TP, float inv_temp, float temp, float gtemp) {
  extern __shared__ float smem[];
  const int KP = K + 1;  // padded row: no bank conflicts when threads walk positions
  float* sm_s = smem;
  float* sm_t = smem + TP * KP;
  int64_t n = 0, hw0 = 0, row0 = 0;
  int valid;
  if (kRows) {
    row0 = static_cast<int64_t>(blockIdx.x) * TP;
    valid = static_cast<int>(N - row0 < TP ? N - row0 : TP);
  } else {
    const int64_t tiles = (HW + TP - 1) / TP;
    n = blockIdx.x / tiles;
    hw0 = (blockIdx.x % tiles) * TP;
    valid = static_cast<int>(HW - hw0 < TP ? HW - hw0 : TP);
  }
  const int total = TP * K;
  // 1. load the tile (coalesced: the innermost memory axis varies fastest across threads)
  for (int idx = threadIdx.x; idx < total; idx += kThreads) {
    int j, k;
    if (kRows) { k = idx % K; j = idx / K; } else { j = idx % TP; k = idx / TP; }
    if (j < valid) {
      const int64_t off = kRows ? (row0 + j) * K + k : (n * K + k) * HW + hw0 + j;
      sm_s[j * KP + k] = load_f(s + off) * inv_temp;
      sm_t[j * KP + k] = load_f(t + off) * inv_temp;
    }
  }
  __syncthreads();
  // 2. one warp per position: log-sum-exp, KL and gradient
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = warp; j < valid; j += kWarps) {
    float* xs = sm_s + j * KP;
    const float* xt = sm_t + j * KP;
    float ms = -INFINITY, mt = -INFINITY;
    for (int k = lane; k < K; k += 32) { ms = fmaxf(ms, xs[k]); mt = fmaxf(mt, xt[k]); }
    ms = warp_max(ms);
    mt = warp_max(mt);
    float ss = 0.f, st = 0.f;
    for (int k = lane; k < K; k += 32) { ss += expf(xs[k] - ms); st += expf(xt[k] - mt); }
    const float lse_s = ms + logf(warp_sum(ss));
    const float lse_t = mt + logf(warp_sum(st));
    float kl = 0.f;
    for (int k = lane; k < K; k += 32) {
      const float lq = xs[k] - lse_s, lp = xt[k] - lse_t;
      if (kReverse) { const float q = expf(lq); if (q > 0.f) kl += q * (lq - lp); }
      else { const float p = expf(lp); if (p > 0.f) kl += p * (lp - lq); }
    }
    kl = warp_sum(kl);
    __syncwarp();
    for (int k = lane; k < K; k += 32) {
      const float lq = xs[k] - lse_s, lp = xt[k] - lse_t, q = expf(lq);
      xs[k] = kReverse ? gtemp * q * (lq - lp - kl) : gtemp * (q - expf(lp));  // gtemp = T * grad_scale
    }
    if (lane == 0) {
      const int64_t pos = kRows ? row0 + j : n * HW + hw0 + j;
      loss[pos] = temp * temp * kl;
    }
  }
  __syncthreads();
  // 3. write the gradient tile back
  for (int idx = threadIdx.x; idx < total; idx += kThreads) {
    int j, k;
    if (kRows) { k = idx % K; j = idx / K; } else { j = idx % TP; k = idx / TP; }
    if (j < valid) {
      const int64_t off = kRows ? (row0 + j) * K + k : (n * K + k) * HW + hw0 + j;
      grad[off] = from_f<scalar_t>(sm_s[j * KP + k]);
    }
  }
}

// Positions per tile: the largest power of two <= 32 whose two float tiles fit in shared memory.
int tile_positions(int K) {
  int tp = 32;
  while (tp > 1 && 2L * tp * (K + 1) * 4 > kMaxSharedBytes) tp /= 2;
  return tp;
}

int64_t max_classes() { return kMaxSharedBytes / 8 - 1; }

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
  TORCH_CHECK(K64 <= max_classes(), "kl_fused: K = ", K64, " exceeds the kernel's limit of ", max_classes());
  c10::cuda::CUDAGuard guard(student.device());
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
  const bool rows = HW == 1;
  const int TP = tile_positions(K);
  const int64_t blocks = rows ? (N + TP - 1) / TP : N * ((HW + TP - 1) / TP);
  TORCH_CHECK(blocks < (1LL << 31), "kl_fused: too many positions");
  const size_t shmem = 2 * static_cast<size_t>(TP) * (K + 1) * sizeof(float);
  const float temp = static_cast<float>(temperature), inv_temp = 1.f / temp;
  const float gtemp = reduction == 1 ? temp / static_cast<float>(N * HW) : temp;  // mean: d loss / d s scaled by 1/P
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kl_fused", [&] {
    auto launch = [&](auto kernel) {
      if (shmem > 48 * 1024) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shmem)));
      }
      kernel<<<static_cast<unsigned>(blocks), kThreads, shmem, stream>>>(
          s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), loss.data_ptr<float>(), grad.data_ptr<scalar_t>(),
          N, K, HW, TP, inv_temp, temp, gtemp);
    };
    if (reverse) {
      rows ? launch(kl_fused_kernel<scalar_t, true, true>) : launch(kl_fused_kernel<scalar_t, true, false>);
    } else {
      rows ? launch(kl_fused_kernel<scalar_t, false, true>) : launch(kl_fused_kernel<scalar_t, false, false>);
    }
  });
  C10_CUDA_CHECK(cudaGetLastError());
  if (reduction == 1) return {loss.mean(), grad};  // torch reductions: deterministic, no atomics
  if (reduction == 2) return {loss.sum(), grad};
  return {loss, grad};
}

}  // namespace kdlab
