// Fused KL distillation kernel over per-class logits: loss per position and its gradient with
// respect to the student logits in one pass over memory (formulas in reference.py). Host launch
// code is in kl.cu; the same source runs under the CPU emulator (emulator/launch.cpp).
//
// Layout: logits [N, K, *spatial] contiguous, class axis 1, HW = prod(spatial) (HW = 1 for [N, K]).
// A block owns a tile of TP positions: it reads the tile's student and teacher logits from global
// memory once (coalesced along the innermost axis), keeps them in shared memory as floats, and one
// warp per position computes the max, log-sum-exp, KL and gradient with warp shuffles (a fixed
// reduction order: deterministic, no atomics). The gradient overwrites the tile in shared memory and
// is written back with the same coalesced pattern. Global traffic: read s, read t, write grad, write
// one float per position.
#pragma once
#include "common.cuh"

namespace kdlab {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSharedBytes = 96 * 1024;

// Shared-memory row stride of one position's K classes: odd, so the threads of a warp that store
// 32 consecutive positions (stride KS floats apart) hit 32 different banks.
__host__ __device__ inline int kl_row_stride(int K) { return K | 1; }

struct KlLaunch {
  int64_t blocks;
  int tile;        // positions per block (TP)
  size_t shared;   // dynamic shared memory per block, bytes
};

// Positions per tile: the largest power of two <= max_tile (at most 32: the default) whose two
// float tiles fit in shared memory. Smaller tiles trade work per block for more blocks per SM.
inline KlLaunch kl_launch_config(int64_t N, int K, int64_t HW, int max_tile = 32) {
  int tp = 32;
  while (tp > 1 && tp > max_tile) tp /= 2;
  while (tp > 1 && 2L * tp * kl_row_stride(K) * 4 > kMaxSharedBytes) tp /= 2;
  const int64_t blocks = HW == 1 ? (N + tp - 1) / tp : N * ((HW + tp - 1) / tp);
  return {blocks, tp, 2 * static_cast<size_t>(tp) * kl_row_stride(K) * sizeof(float)};
}

// gtemp of kl_fused_kernel: T times d (reduced loss) / d (loss at one position); reduction 0 =
// none, 1 = mean over `positions`, 2 = sum.
inline float kl_grad_scale(float temp, int64_t reduction, int64_t positions) {
  return reduction == 1 ? temp / static_cast<float>(positions) : temp;
}

// Largest K with one position's two rows in shared memory: 2 * (K | 1) * 4 <= kMaxSharedBytes.
inline int64_t kl_max_classes() { return kMaxSharedBytes / 8 - 1; }

// One position's KL and gradient by one warp, from its student row xs and teacher row xt (K logits
// divided by T, in shared memory); the gradient gtemp * d KL / d (s / T) overwrites xs. Returns KL
// (on every lane). With q = softmax(s / T), p = softmax(t / T):
//   forward:  KL = sum_k p_k (log p_k - log q_k),   d (T^2 KL) / d s_k = T (q_k - p_k)
//   reverse:  KL = sum_k q_k (log q_k - log p_k),   d (T^2 KL) / d s_k = T q_k (log q_k - log p_k - KL)
// kPerLane > 0 (K <= 32 kPerLane): each lane keeps its kPerLane logits and their exponentials in
// registers, so every exponential is computed once and shared memory is read once. kPerLane = 0:
// any K, re-reading shared memory and recomputing exponentials in each pass.
template <int kPerLane, bool kReverse>
__device__ __forceinline__ float kl_row(float* xs, const float* xt, int K, int lane, float gtemp) {
  if constexpr (kPerLane > 0) {
    constexpr int R = kPerLane;
    float s[R], t[R], es[R], et[R];
    float ms = -INFINITY, mt = -INFINITY;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int k = lane + 32 * i;
      s[i] = k < K ? xs[k] : -INFINITY;
      t[i] = k < K ? xt[k] : -INFINITY;
      ms = fmaxf(ms, s[i]);
      mt = fmaxf(mt, t[i]);
    }
    ms = warp_max(ms);
    mt = warp_max(mt);
    float ss = 0.f, st = 0.f;
#pragma unroll
    for (int i = 0; i < R; ++i) {  // exp(-inf) = 0 for the padding
      es[i] = expf(s[i] - ms);
      et[i] = expf(t[i] - mt);
      ss += es[i];
      st += et[i];
    }
    ss = warp_sum(ss);
    st = warp_sum(st);
    const float lse_s = ms + logf(ss), lse_t = mt + logf(st), inv_ss = 1.f / ss, inv_st = 1.f / st;
    float kl = 0.f;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      if (lane + 32 * i >= K) continue;
      const float lq = s[i] - lse_s, lp = t[i] - lse_t;
      if (kReverse) { const float q = es[i] * inv_ss; if (q > 0.f) kl += q * (lq - lp); }
      else { const float p = et[i] * inv_st; if (p > 0.f) kl += p * (lp - lq); }
    }
    kl = warp_sum(kl);
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int k = lane + 32 * i;
      if (k >= K) continue;
      const float q = es[i] * inv_ss;
      xs[k] = kReverse ? gtemp * q * ((s[i] - lse_s) - (t[i] - lse_t) - kl) : gtemp * (q - et[i] * inv_st);
    }
    return kl;
  } else {
    float ms = -INFINITY, mt = -INFINITY;
    for (int k = lane; k < K; k += 32) { ms = fmaxf(ms, xs[k]); mt = fmaxf(mt, xt[k]); }
    ms = warp_max(ms);
    mt = warp_max(mt);
    float ss = 0.f, st = 0.f;
    for (int k = lane; k < K; k += 32) { ss += expf(xs[k] - ms); st += expf(xt[k] - mt); }
    const float lse_s = ms + logf(warp_sum(ss));  // log sum_k exp(s_k / T)
    const float lse_t = mt + logf(warp_sum(st));
    float kl = 0.f;
    for (int k = lane; k < K; k += 32) {
      const float lq = xs[k] - lse_s, lp = xt[k] - lse_t;
      if (kReverse) { const float q = expf(lq); if (q > 0.f) kl += q * (lq - lp); }
      else { const float p = expf(lp); if (p > 0.f) kl += p * (lp - lq); }
    }
    kl = warp_sum(kl);
    for (int k = lane; k < K; k += 32) {  // each lane overwrites only the logits it reads
      const float lq = xs[k] - lse_s, lp = xt[k] - lse_t, q = expf(lq);
      xs[k] = kReverse ? gtemp * q * (lq - lp - kl) : gtemp * (q - expf(lp));
    }
    return kl;
  }
}

// Logits per lane kept in registers by kl_row: 8 for K <= 256, else 0 (the shared-memory loop).
inline int kl_per_lane(int K) { return K <= 256 ? 8 : 0; }

// s, t: logits [N, K, HW] (kRows: HW == 1); loss: [N * HW] float; grad: like s. gtemp = T * (d
// reduced loss / d per-position loss): T for none / sum, T / (N HW) for mean.
template <typename scalar_t, bool kReverse, bool kRows, int kPerLane>
__global__ void __launch_bounds__(kThreads) kl_fused_kernel(
    const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, float* __restrict__ loss,
    scalar_t* __restrict__ grad, int64_t N, int K, int64_t HW, int TP, float inv_temp, float temp, float gtemp) {
  KDLAB_DYNAMIC_SHARED(float, smem);
  const int KS = kl_row_stride(K);
  float* sm_s = smem;
  float* sm_t = smem + TP * KS;
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
#pragma unroll 4
  for (int idx = threadIdx.x; idx < total; idx += kThreads) {  // unrolled: several loads in flight
    int j, k;
    if (kRows) { k = idx % K; j = idx / K; } else { j = idx % TP; k = idx / TP; }
    if (j < valid) {
      const int64_t off = kRows ? (row0 + j) * K + k : (n * K + k) * HW + hw0 + j;
      sm_s[j * KS + k] = to_float(s[off]) * inv_temp;
      sm_t[j * KS + k] = to_float(t[off]) * inv_temp;
    }
  }
  __syncthreads();
  // 2. one warp per position: log-sum-exp, KL and gradient (overwriting the student row)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = warp; j < valid; j += kWarps) {
    const float kl = kl_row<kPerLane, kReverse>(sm_s + j * KS, sm_t + j * KS, K, lane, gtemp);
    if (lane == 0) {
      const int64_t pos = kRows ? row0 + j : n * HW + hw0 + j;
      loss[pos] = temp * temp * kl;
    }
  }
  __syncthreads();
  // 3. write the gradient tile back
#pragma unroll 4
  for (int idx = threadIdx.x; idx < total; idx += kThreads) {
    int j, k;
    if (kRows) { k = idx % K; j = idx / K; } else { j = idx % TP; k = idx / TP; }
    if (j < valid) {
      const int64_t off = kRows ? (row0 + j) * K + k : (n * K + k) * HW + hw0 + j;
      grad[off] = from_float<scalar_t>(sm_s[j * KS + k]);
    }
  }
}

// Calls launch(kernel) with the kl_fused_kernel instantiation for these arguments (host code; the
// CUDA launcher and the emulator share it).
template <typename scalar_t, typename Launch>
void kl_dispatch(bool reverse, int64_t HW, int K, Launch&& launch) {
  const bool rows = HW == 1, registers = kl_per_lane(K) > 0;
  if (reverse) {
    if (rows) registers ? launch(kl_fused_kernel<scalar_t, true, true, 8>) : launch(kl_fused_kernel<scalar_t, true, true, 0>);
    else registers ? launch(kl_fused_kernel<scalar_t, true, false, 8>) : launch(kl_fused_kernel<scalar_t, true, false, 0>);
  } else {
    if (rows) registers ? launch(kl_fused_kernel<scalar_t, false, true, 8>) : launch(kl_fused_kernel<scalar_t, false, true, 0>);
    else registers ? launch(kl_fused_kernel<scalar_t, false, false, 8>) : launch(kl_fused_kernel<scalar_t, false, false, 0>);
  }
}

}  // namespace kdlab
