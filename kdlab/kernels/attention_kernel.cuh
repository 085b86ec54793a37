// Fused attention-transfer kernel: per sample, the channel reduction a = mean_c |F|^p of student
// and teacher features, the L2 normalisation, the distance and the gradient with respect to the
// student features (formulas in reference.py). Host launch code is in attention.cu; the same source
// runs under the CPU emulator (tools/simt/launch.cpp).
//
// Layout: features [N, C, H, W] contiguous; one block per sample, one thread per spatial position
// (looping when HW > blockDim). The channel axis is not innermost, so a thread walks its column
// with stride HW while neighbouring threads read neighbouring positions: every load is coalesced.
// The per-sample norms and dot products are block reductions in shared memory in a fixed order
// (deterministic, no atomics). Global traffic: read F_S twice (maps, then gradient), F_T once,
// write the gradient once.
#pragma once
#include "common.cuh"

namespace kdlab {

constexpr int kAtThreads = 1024;
constexpr int kAtMaxPositions = 8192;  // two float maps of HW in shared memory (64 KiB)

// Largest H W whose two float maps and the block reduction's floats fit in `max_shared` bytes.
inline int attention_max_positions(int max_shared = kMaxSharedBytes) {
  const int fit = (max_shared / 4 - kAtThreads / 32) / 2;
  return fit < kAtMaxPositions ? fit : kAtMaxPositions;
}

struct AtLaunch {
  int threads;    // per block (a multiple of 32)
  size_t shared;  // dynamic shared memory per block, bytes: a_S, a_T and one float per warp
};

inline AtLaunch attention_launch_config(int HW) {
  const int threads = HW < kAtThreads ? ((HW + 31) / 32) * 32 : kAtThreads;
  return {threads, (2 * static_cast<size_t>(HW) + threads / 32) * sizeof(float)};
}

// gscale of attention_fused_kernel: d (reduced loss) / d (loss of one sample); reduction 0 = none,
// 1 = mean over the N samples, 2 = sum.
inline float attention_grad_scale(int64_t reduction, int64_t N) {
  return reduction == 1 ? 1.f / static_cast<float>(N) : 1.f;
}

template <typename scalar_t>
__device__ __forceinline__ float abs_pow(scalar_t x, float p, bool square) {
  const float v = to_float(x);
  return square ? v * v : powf(fabsf(v), p);
}

// fs: [N, Cs, HW], ft: [N, Ct, HW], loss: [N] float, grad: like fs. gscale = d reduced loss / d
// per-sample loss (1 / N for mean, else 1). Launch: N blocks of attention_launch_config(HW).
template <typename scalar_t>
__global__ void __launch_bounds__(kAtThreads) attention_fused_kernel(
    const scalar_t* __restrict__ fs, const scalar_t* __restrict__ ft, float* __restrict__ loss,
    scalar_t* __restrict__ grad, int Cs, int Ct, int HW, float p, float gscale) {
  KDLAB_DYNAMIC_SHARED(float, smem);
  float* a_s = smem;        // (HW,)
  float* a_t = smem + HW;   // (HW,)
  float* red = smem + 2 * HW;
  const bool square = p == 2.f;
  const int64_t n = blockIdx.x;
  const scalar_t* xs = fs + n * Cs * static_cast<int64_t>(HW);
  const scalar_t* xt = ft + n * Ct * static_cast<int64_t>(HW);
  float ss = 0.f, st = 0.f;
  for (int j = threadIdx.x; j < HW; j += blockDim.x) {  // a[j] = mean_c |F[c, j]|^p
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
  float dd = 0.f, ud = 0.f;  // u = a_S / ||a_S||, d = u - a_T / ||a_T||: sum_j d_j^2, sum_j u_j d_j
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
      const float x = to_float(xs[off]);
      const float dx = square ? 2.f * x : p * powf(fabsf(x), p - 1.f) * ((x > 0.f) - (x < 0.f));
      g[off] = from_float<scalar_t>(g_a * dx * inv_cs);
    }
  }
}

}  // namespace kdlab
