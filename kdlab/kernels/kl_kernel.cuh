// Fused KL distillation kernel over per-class logits: loss per position and its gradient with
// respect to the student logits in one pass over memory (formulas in reference.py). Host launch
// code is in kl.cu; the same source runs under the CPU emulator (tools/simt/launch.cpp).
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

// Shared-memory row stride of one position's K classes: odd, so the threads of a warp that store
// 32 consecutive positions (stride KS floats apart) hit 32 different banks.
__host__ __device__ inline int kl_row_stride(int K) { return K | 1; }

struct KlLaunch {
  int64_t blocks;
  int tile;        // positions per block (TP)
  size_t shared;   // dynamic shared memory per block, bytes
};

// Lanes per position: 4 for K <= 4, 16 for K <= 16, else a whole warp (32).
inline int kl_group(int K) { return K <= 4 ? 4 : K <= 16 ? 16 : 32; }

// Positions per tile: by default 32 (whole-warp positions: 4 per warp) or 512 / group (two rounds of
// every warp: 32 for K <= 16, 128 for K <= 4); `tile` > 0 overrides it (benchmark tuning). Then
// halved until the two float tiles fit in `max_shared` bytes (the device's limit).
inline KlLaunch kl_launch_config(int64_t N, int K, int64_t HW, int tile = 0, int max_shared = kMaxSharedBytes) {
  int tp = kl_group(K) == 32 ? 32 : 512 / kl_group(K);
  if (tile > 0) for (tp = 1; tp * 2 <= tile && tp < 256; tp *= 2) {}
  while (tp > 1 && 2L * tp * kl_row_stride(K) * 4 > max_shared) tp /= 2;
  const int64_t blocks = HW == 1 ? (N + tp - 1) / tp : N * ((HW + tp - 1) / tp);
  return {blocks, tp, 2 * static_cast<size_t>(tp) * kl_row_stride(K) * sizeof(float)};
}

// gtemp of kl_fused_kernel: T times d (reduced loss) / d (loss at one position); reduction 0 =
// none, 1 = mean over `positions`, 2 = sum.
inline float kl_grad_scale(float temp, int64_t reduction, int64_t positions) {
  return reduction == 1 ? temp / static_cast<float>(positions) : temp;
}

// Largest K with one position's two rows in shared memory: 2 * (K | 1) * 4 <= max_shared.
inline int64_t kl_max_classes(int max_shared = kMaxSharedBytes) { return max_shared / 8 - 1; }

// One position's KL and gradient by a group of kGroup lanes (lane k0 of the group), from its student
// row xs and teacher row xt (K logits divided by T, in shared memory); the gradient
// gtemp * d KL / d (s / T) overwrites xs. Returns KL (on every lane of the group). Lanes of an
// inactive group (past the tile's last position) read and write nothing but join the shuffles.
// With q = softmax(s / T), p = softmax(t / T):
//   forward:  KL = sum_k p_k (log p_k - log q_k),   d (T^2 KL) / d s_k = T (q_k - p_k)
//   reverse:  KL = sum_k q_k (log q_k - log p_k),   d (T^2 KL) / d s_k = T q_k (log q_k - log p_k - KL)
// log q_k = (s_k - max s) - log sum_j exp(s_j - max s): the shift is subtracted first, so large
// logits lose no precision (as in log_softmax). A class with q_k = 0 (a -inf logit) gets gradient 0.
// kPerLane > 0 (K <= kGroup kPerLane): each lane keeps its logits and their exponentials in
// registers, so every exponential is computed once and shared memory is read once. kPerLane = 0
// (kGroup = 32, any K): re-reads shared memory and recomputes exponentials in each pass.
template <int kGroup, int kPerLane, bool kReverse>
__device__ __forceinline__ float kl_row(float* xs, const float* xt, int K, int k0, bool active, float gtemp) {
  if constexpr (kPerLane > 0) {
    constexpr int R = kPerLane;
    float s[R], t[R], es[R], et[R];
    float ms = -INFINITY, mt = -INFINITY;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int k = k0 + kGroup * i;
      const bool ok = active && k < K;
      s[i] = ok ? xs[k] : -INFINITY;
      t[i] = ok ? xt[k] : -INFINITY;
      ms = fmaxf(ms, s[i]);
      mt = fmaxf(mt, t[i]);
    }
    ms = group_max<kGroup>(ms);
    mt = group_max<kGroup>(mt);
    float ss = 0.f, st = 0.f;
#pragma unroll
    for (int i = 0; i < R; ++i) {  // from here on s, t hold s - max s, t - max t
      const bool ok = active && k0 + kGroup * i < K;
      s[i] -= ms;
      t[i] -= mt;
      es[i] = ok ? expf(s[i]) : 0.f;  // padding and inactive lanes contribute 0
      et[i] = ok ? expf(t[i]) : 0.f;
      ss += es[i];
      st += et[i];
    }
    ss = group_sum<kGroup>(ss);
    st = group_sum<kGroup>(st);
    const float log_ss = logf(ss), log_st = logf(st), inv_ss = 1.f / ss, inv_st = 1.f / st;
    float kl = 0.f;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      if (!active || k0 + kGroup * i >= K) continue;
      const float lq = s[i] - log_ss, lp = t[i] - log_st;
      if (kReverse) { const float q = es[i] * inv_ss; if (q > 0.f) kl += q * (lq - lp); }
      else { const float p = et[i] * inv_st; if (p > 0.f) kl += p * (lp - lq); }
    }
    kl = group_sum<kGroup>(kl);
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int k = k0 + kGroup * i;
      if (!active || k >= K) continue;
      const float q = es[i] * inv_ss;
      xs[k] = kReverse ? (q > 0.f ? gtemp * q * ((s[i] - log_ss) - (t[i] - log_st) - kl) : 0.f)
                       : gtemp * (q - et[i] * inv_st);
    }
    return kl;
  } else {  // kGroup == 32: the whole warp, always active
    float ms = -INFINITY, mt = -INFINITY;
    for (int k = k0; k < K; k += 32) { ms = fmaxf(ms, xs[k]); mt = fmaxf(mt, xt[k]); }
    ms = warp_max(ms);
    mt = warp_max(mt);
    float ss = 0.f, st = 0.f;
    for (int k = k0; k < K; k += 32) { ss += expf(xs[k] - ms); st += expf(xt[k] - mt); }
    const float log_ss = logf(warp_sum(ss)), log_st = logf(warp_sum(st));  // log sum_k exp(s_k / T - max)
    float kl = 0.f;
    for (int k = k0; k < K; k += 32) {
      const float lq = (xs[k] - ms) - log_ss, lp = (xt[k] - mt) - log_st;
      if (kReverse) { const float q = expf(lq); if (q > 0.f) kl += q * (lq - lp); }
      else { const float p = expf(lp); if (p > 0.f) kl += p * (lp - lq); }
    }
    kl = warp_sum(kl);
    for (int k = k0; k < K; k += 32) {  // each lane overwrites only the logits it reads
      const float lq = (xs[k] - ms) - log_ss, lp = (xt[k] - mt) - log_st, q = expf(lq);
      xs[k] = kReverse ? (q > 0.f ? gtemp * q * (lq - lp - kl) : 0.f) : gtemp * (q - expf(lp));
    }
    return kl;
  }
}

// s, t: logits [N, K, HW] (kRows: HW == 1); loss: [N * HW] float; grad: like s. gtemp = T * (d
// reduced loss / d per-position loss): T for none / sum, T / (N HW) for mean.
template <typename scalar_t, bool kReverse, bool kRows, int kGroup, int kPerLane>
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
  // 2. kGroup lanes per position (32 / kGroup positions per warp and round): log-sum-exp, KL and
  // gradient, overwriting the student row
  constexpr int kPositionsPerWarp = 32 / kGroup;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = lane / kGroup, k0 = lane % kGroup;
  for (int base = warp * kPositionsPerWarp; base < valid; base += kWarps * kPositionsPerWarp) {  // warp-uniform
    const int j = base + sub;
    const bool active = kGroup == 32 || j < valid;  // a whole-warp position is always inside the tile
    const float kl = kl_row<kGroup, kPerLane, kReverse>(sm_s + j * KS, sm_t + j * KS, K, k0, active, gtemp);
    if (active && k0 == 0) {
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
// CUDA launcher and the emulator share it). Lanes per position as kl_group; logits per lane kept
// in registers: 1 for K <= 16 (a lane per class), 8 for K <= 256, else 0 (the shared-memory loop).
template <typename scalar_t, bool kReverse, bool kRows, typename Launch>
void kl_dispatch_k(int K, Launch&& launch) {
  if (K <= 4) launch(kl_fused_kernel<scalar_t, kReverse, kRows, 4, 1>);
  else if (K <= 16) launch(kl_fused_kernel<scalar_t, kReverse, kRows, 16, 1>);
  else if (K <= 256) launch(kl_fused_kernel<scalar_t, kReverse, kRows, 32, 8>);
  else launch(kl_fused_kernel<scalar_t, kReverse, kRows, 32, 0>);
}

template <typename scalar_t, typename Launch>
void kl_dispatch(bool reverse, int64_t HW, int K, Launch&& launch) {
  if (reverse) HW == 1 ? kl_dispatch_k<scalar_t, true, true>(K, launch) : kl_dispatch_k<scalar_t, true, false>(K, launch);
  else HW == 1 ? kl_dispatch_k<scalar_t, false, true>(K, launch) : kl_dispatch_k<scalar_t, false, false>(K, launch);
}

}  // namespace kdlab
