// Fused attention-transfer kernels: per sample, the channel reduction a = mean_c |F|^p of student
// and teacher features, the L2 normalisation, the distance and the gradient with respect to the
// student features (formulas in reference.py). Host launch code is in attention.cu; the same source
// runs under the CPU emulator (tools/simt/launch.cpp, float32 only).
//
// Layout: features [N, C, H, W] contiguous, HW = H W. Three launches, each with many blocks per
// sample, so a batch smaller than the number of SMs still fills the GPU:
// 1. maps: a block owns 32 positions (lane = position: a warp reads 32 neighbouring positions of one
//    channel, coalesced) and its warps split the channels (channel c belongs to warp c % warps);
//    each thread keeps kUnroll independent loads and accumulators in flight, and the warps' partial
//    sums are added in warp order through shared memory. Writes a_S, a_T [N, HW] (float).
// 2. stats: one block per sample reads its two maps (H W floats each) and computes the norms, the
//    loss sum_j d_j^2 and sum_j u_j d_j (block reductions in a fixed order) as the formulas state.
// 3. gradient: blocks as in 1; each thread writes dL/dF_S for its channels at its position.
// No atomics anywhere: results are bitwise reproducible. Global traffic: read F_S twice, F_T once,
// write the gradient once, plus the maps (2 N H W floats written, read twice).
#pragma once
#include "common.cuh"

namespace kdlab {

constexpr int kAtTile = 32;    // positions per block in the maps and gradient kernels: one per lane
constexpr int kAtWarps = 8;    // warps per block there; channel c belongs to warp c % kAtWarps
constexpr int kAtUnroll = 8;   // independent loads and accumulators per thread
constexpr int kAtStatsThreads = 1024;

// Blocks of the maps and gradient kernels: N * ceil(HW / 32).
inline int64_t attention_blocks(int64_t N, int64_t HW) { return N * ((HW + kAtTile - 1) / kAtTile); }

// Threads of the stats kernel (one block per sample): HW rounded up to a warp, at most 1,024.
inline int attention_stats_threads(int64_t HW) {
  return HW < kAtStatsThreads ? static_cast<int>((HW + 31) / 32) * 32 : kAtStatsThreads;
}

// gscale of attention_grad_kernel: d (reduced loss) / d (loss of one sample); reduction 0 = none,
// 1 = mean over the N samples, 2 = sum.
inline float attention_grad_scale(int64_t reduction, int64_t N) {
  return reduction == 1 ? 1.f / static_cast<float>(N) : 1.f;
}

__device__ __forceinline__ float abs_pow(float v, float p, bool square) { return square ? v * v : powf(fabsf(v), p); }

// sum over channels c = first, first + step, ... < C of |x[c * HW]|^p, with kAtUnroll loads in flight
// and as many accumulators, added in a fixed order.
template <typename scalar_t>
__device__ __forceinline__ float channel_sum(const scalar_t* x, int64_t HW, int first, int step, int C, float p,
                                             bool square) {
  float acc[kAtUnroll] = {};
  int c = first;
  for (; c + (kAtUnroll - 1) * step < C; c += kAtUnroll * step) {
    float v[kAtUnroll];
#pragma unroll
    for (int u = 0; u < kAtUnroll; ++u) v[u] = to_float(x[(c + u * step) * HW]);
#pragma unroll
    for (int u = 0; u < kAtUnroll; ++u) acc[u] += abs_pow(v[u], p, square);
  }
  for (; c < C; c += step) acc[0] += abs_pow(to_float(x[c * HW]), p, square);
  float total = 0.f;
#pragma unroll
  for (int u = 0; u < kAtUnroll; ++u) total += acc[u];
  return total;
}

// fs: [N, Cs, HW], ft: [N, Ct, HW]; maps: [2, N, HW] float, a_S then a_T.
// Launch: attention_blocks(N, HW) blocks of kAtWarps * 32 threads, 2 * kAtWarps * 32 floats of shared memory.
template <typename scalar_t>
__global__ void __launch_bounds__(kAtWarps * 32) attention_maps_kernel(
    const scalar_t* __restrict__ fs, const scalar_t* __restrict__ ft, float* __restrict__ maps, int64_t N, int Cs,
    int Ct, int64_t HW, float p) {
  KDLAB_DYNAMIC_SHARED(float, red);  // [2][kAtWarps][32]
  const int64_t tiles = (HW + kAtTile - 1) / kAtTile;
  const int64_t n = blockIdx.x / tiles;
  const int64_t j = (blockIdx.x % tiles) * kAtTile + threadIdx.x % 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool square = p == 2.f, active = j < HW;
  float as = 0.f, at = 0.f;
  if (active) {
    as = channel_sum(fs + n * Cs * HW + j, HW, warp, kAtWarps, Cs, p, square);
    at = channel_sum(ft + n * Ct * HW + j, HW, warp, kAtWarps, Ct, p, square);
  }
  red[warp * 32 + lane] = as;
  red[(kAtWarps + warp) * 32 + lane] = at;
  __syncthreads();
  if (warp == 0 && active) {
    float ss = red[lane], st = red[kAtWarps * 32 + lane];
    for (int w = 1; w < kAtWarps; ++w) { ss += red[w * 32 + lane]; st += red[(kAtWarps + w) * 32 + lane]; }
    maps[n * HW + j] = ss / Cs;
    maps[(N + n) * HW + j] = st / Ct;
  }
}

// Weight of the loss and its gradient: `weight`, times the float at `weight_ptr` unless it is null (read on
// the device: no host synchronisation).
__device__ __forceinline__ float total_weight(float weight, const float* weight_ptr) {
  return weight_ptr ? weight * *weight_ptr : weight;
}

// maps: [2, N, HW] from attention_maps_kernel; loss: [N] float; stats: [N, 3] float (||a_S||, ||a_T||,
// sum_j u_j d_j). With u = a_S / ||a_S||, d = u - a_T / ||a_T|| (norms at least 1e-12): loss = sum_j d_j^2
// (times the weight). Launch: N blocks of attention_stats_threads(HW) threads, 32 floats of shared memory.
__global__ void __launch_bounds__(kAtStatsThreads) attention_stats_kernel(
    const float* __restrict__ maps, float* __restrict__ loss, float* __restrict__ stats, int64_t N, int64_t HW,
    float weight, const float* __restrict__ weight_ptr) {
  KDLAB_DYNAMIC_SHARED(float, red);
  const int64_t n = blockIdx.x;
  const float* a_s = maps + n * HW;
  const float* a_t = maps + (N + n) * HW;
  float ss = 0.f, st = 0.f;
  for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) { ss += a_s[j] * a_s[j]; st += a_t[j] * a_t[j]; }
  const float norm_s = fmaxf(sqrtf(block_sum(ss, red)), 1e-12f);
  const float norm_t = fmaxf(sqrtf(block_sum(st, red)), 1e-12f);
  float dd = 0.f, ud = 0.f;  // sum_j d_j^2, sum_j u_j d_j
  for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) {
    const float u = a_s[j] / norm_s, d = u - a_t[j] / norm_t;
    dd += d * d;
    ud += u * d;
  }
  dd = block_sum(dd, red);
  ud = block_sum(ud, red);
  if (threadIdx.x == 0) {
    loss[n] = total_weight(weight, weight_ptr) * dd;
    stats[3 * n] = norm_s;
    stats[3 * n + 1] = norm_t;
    stats[3 * n + 2] = ud;
  }
}

// fs: [N, Cs, HW]; maps, stats as above; grad: like fs, weight * gscale * d loss / d F_S where
// d loss / d a_S[j] = 2 (d_j - u_j sum_k u_k d_k) / ||a_S|| and d a_S[j] / d F_S[c, j] = p |F|^(p-1) sign(F) / C_S.
// Launch: as attention_maps_kernel, no shared memory.
template <typename scalar_t>
__global__ void __launch_bounds__(kAtWarps * 32) attention_grad_kernel(
    const scalar_t* __restrict__ fs, const float* __restrict__ maps, const float* __restrict__ stats,
    scalar_t* __restrict__ grad, int64_t N, int Cs, int64_t HW, float p, float gscale, float weight,
    const float* __restrict__ weight_ptr) {
  const int64_t tiles = (HW + kAtTile - 1) / kAtTile;
  const int64_t n = blockIdx.x / tiles;
  const int64_t j = (blockIdx.x % tiles) * kAtTile + threadIdx.x % 32;
  if (j >= HW) return;  // no barrier follows
  const float norm_s = stats[3 * n], norm_t = stats[3 * n + 1], ud = stats[3 * n + 2];
  const float u = maps[n * HW + j] / norm_s, d = u - maps[(N + n) * HW + j] / norm_t;
  const float g_a = 2.f * (d - u * ud) / norm_s * (gscale * total_weight(weight, weight_ptr) / Cs);
  const bool square = p == 2.f;
  const scalar_t* x = fs + n * Cs * HW + j;
  scalar_t* g = grad + n * Cs * HW + j;
  const int warp = threadIdx.x / 32;
  int c = warp;
  for (; c + (kAtUnroll - 1) * kAtWarps < Cs; c += kAtUnroll * kAtWarps) {
    float v[kAtUnroll];
#pragma unroll
    for (int i = 0; i < kAtUnroll; ++i) v[i] = to_float(x[(c + i * kAtWarps) * HW]);  // loads issued together
#pragma unroll
    for (int i = 0; i < kAtUnroll; ++i) {
      const float dx = square ? 2.f * v[i] : p * powf(fabsf(v[i]), p - 1.f) * ((v[i] > 0.f) - (v[i] < 0.f));
      g[(c + i * kAtWarps) * HW] = from_float<scalar_t>(g_a * dx);
    }
  }
  for (; c < Cs; c += kAtWarps) {
    const float v = to_float(x[c * HW]);
    const float dx = square ? 2.f * v : p * powf(fabsf(v), p - 1.f) * ((v > 0.f) - (v < 0.f));
    g[c * HW] = from_float<scalar_t>(g_a * dx);
  }
}

}  // namespace kdlab
