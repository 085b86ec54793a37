// Fused KL distillation kernels over per-class logits: the loss per position and its gradient with
// respect to the student logits in one pass over memory (formulas in reference.py). Host launch code
// is in kl.cu; the same source runs under the CPU emulator (tools/simt/launch.cpp, float32 only).
//
// Two layouts, two kernels, chosen by the plans below:
// - columns: logits [N, K, *spatial] contiguous, the positions innermost. Lane = position: a warp's
//   32 lanes read 32 neighbouring positions of one class (coalesced), and the W warps of a block own
//   interleaved slices of the classes (class k belongs to warp k % W). A thread loads all of its
//   classes into registers before using any (2 * kPer loads in flight), then the W partial
//   results of each position are combined across warps through shared memory in warp order.
// - rows: the class axis innermost ([N, K], or [N, *spatial, K] in memory: channels-last). G threads
//   share a row (G grows with K, up to a block); each reads V classes per load (16 bytes when K and
//   the pointers allow) and kR loads per tensor, all issued before use; partial results are combined
//   with group shuffles (G <= 32) or across the block's warps.
// When K is too large for registers (columns: K > 256; rows: K > 512 kR V), the streaming variants
// read the logits twice: once for the statistics (each thread's maxima raised as it goes, its sums
// rescaled to them: accumulate_online), once for the gradient. On an H200 the second read came from
// DRAM, not L2, at [512, 32768]: 264 of its 512 rows (2 blocks an SM) are in flight at once.
// Every combine runs in a fixed order, so results are bitwise reproducible (no atomics). Global
// traffic of the register paths: read s, read t, write grad, write one float per position.
#pragma once
#include "common.cuh"

#include <type_traits>

namespace kdlab {

// kV values of type T in one aligned load or store (16 bytes for 4 floats or 8 bf16 / fp16).
template <typename T, int kV>
struct alignas(sizeof(T) * kV) Pack {
  T v[kV];
};

// exp(x / T) for inv_t = 1 / T as one exp2 instruction of x (log2(e) / T) (ex2.approx.ftz: relative error
// about 2^-22, plus the rounding of the product, about |x / T| 2^-24, so about 2^-18 near the underflow at
// x / T = -87; results below 2^-126 flushed to 0), for the kernels' arguments: differences from a maximum,
// in the logits' own units. The kernels keep logits as loaded and subtract before dividing by T, so large
// logits lose no precision to the scaling, and the division costs no instruction of its own.
// exp(-inf) = 0.
__device__ __forceinline__ float exp_over_t(float x, float inv_t) {
#ifdef KDLAB_SIMT_EMULATOR
  return exp2f(x * (inv_t * 1.4426950408889634f));
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * (inv_t * 1.4426950408889634f)));
  return y;
#endif
}

// exp(x), the same instruction
__device__ __forceinline__ float exp_nat(float x) { return exp_over_t(x, 1.f); }

// p itself, hidden from the optimiser: nvcc would otherwise fold a thread's 64-bit base offset into each
// 32-bit element offset (64-bit adds, a shift and a 64-bit add an address) instead of one IMAD.WIDE
// from the pointer. No instruction of its own.
template <typename T>
__device__ __forceinline__ T* opaque(T* p) {
#ifndef KDLAB_SIMT_EMULATOR
  asm("" : "+l"(p));
  __builtin_assume(__isGlobal(p));
#endif
  return p;
}

// Arguments shared by every KL kernel (passed by value, so all kernels have one signature).
// columns: N samples, K classes, HW positions per sample. rows: N = rows, K = classes per row, HW = 1.
// group: threads per row (rows kernels). scale = 1 / T. gtemp = T * (d reduced loss /
// d per-position loss): T for none / sum, T / positions for mean. The loss and its gradient are
// multiplied by weight and, when weight_ptr is not null, by the float it points to (read on the
// device: no host synchronisation).
struct KlArgs {
  int64_t N;
  int K;
  int64_t HW;
  int group;
  float scale, temp, gtemp, weight;
  const float* weight_ptr;
  __device__ __forceinline__ float total_weight() const { return weight_ptr ? weight * *weight_ptr : weight; }
};

// Softmax statistics of some of one position's elements, student logits a and teacher logits b as
// loaded (not divided by T): maxima ma, mb; sums sa = sum exp((a_k - ma) / T), sb = sum exp((b_k - mb) / T);
// and the KL numerator, in the logits' units
//   forward (weights w_k = exp((b_k - mb) / T)):  d = sum_k w_k ((b_k - mb) - (a_k - ma))
//   reverse (weights w_k = exp((a_k - ma) / T)):  d = sum_k w_k ((a_k - ma) - (b_k - mb))
// Differences are taken from the maxima, so a constant offset between student and teacher logits
// cancels exactly instead of in a large sum. Over the whole position (maxima Ma, Mb, sums Sa, Sb):
//   forward KL = D / (T Sb) + log Sa - log Sb,  reverse KL = D / (T Sa) + log Sb - log Sa.
struct SoftmaxStats {
  float ma, sa, mb, sb, d;
};

// exp((m - M) / T) for a maximum m <= M; 0 for m = -inf (no elements, or all masked)
__device__ __forceinline__ float rescale(float m, float M, float inv_t) {
  return m == -INFINITY ? 0.f : exp_over_t(m - M, inv_t);
}

// x's sums and numerator taken to the larger maxima (Ma, Mb): for adding up the parts of a position.
// d moves with its weights' maximum, and its differences gain ((mb - Mb) - (ma - Ma)) per unit weight.
template <bool kReverse>
__device__ __forceinline__ SoftmaxStats shift_stats(const SoftmaxStats& x, float Ma, float Mb, float inv_t) {
  const float fa = rescale(x.ma, Ma, inv_t), fb = rescale(x.mb, Mb, inv_t);
  const float weight = kReverse ? x.sa : x.sb, f = kReverse ? fa : fb;
  // an unchanged maximum moves by 0, also when it is -inf (a part, or a stream so far, with every logit of
  // one side masked: -inf - -inf would be NaN where the numerator is rightly +inf)
  const float da = x.ma == Ma ? 0.f : x.ma - Ma, db = x.mb == Mb ? 0.f : x.mb - Mb;
  const float offset = kReverse ? da - db : db - da;
  // a part whose weight vanishes at the larger maximum (none, masked, or underflowing in float32) adds
  // nothing: as a single class with p = 0 adds nothing, and never 0 * inf (an x.d of +inf, from a -inf
  // logit opposite a finite weight, would otherwise make a NaN that depends on how classes split)
  return {Ma, x.sa * fa, Mb, x.sb * fb, weight * f > 0.f ? f * (x.d + weight * offset) : 0.f};
}

// The statistics of the union of two parts; the same bits whichever part comes first (every step is
// symmetric), so a butterfly leaves identical results on every lane.
template <bool kReverse>
__device__ __forceinline__ SoftmaxStats merge_stats(const SoftmaxStats& x, const SoftmaxStats& y, float inv_t) {
  const float Ma = fmaxf(x.ma, y.ma), Mb = fmaxf(x.mb, y.mb);
  const SoftmaxStats u = shift_stats<kReverse>(x, Ma, Mb, inv_t), v = shift_stats<kReverse>(y, Ma, Mb, inv_t);
  return {Ma, u.sa + v.sa, Mb, u.sb + v.sb, u.d + v.d};
}

// The statistics of n parts stored at p[0], p[stride], ... (shared memory; 5 floats a part, field f at
// p[i * stride + f * fstride]): maxima first, then the sums in part order (deterministic).
template <bool kReverse>
__device__ __forceinline__ SoftmaxStats gather_stats(const float* p, int n, int stride, int fstride, float inv_t) {
  float Ma = -INFINITY, Mb = -INFINITY;
  for (int i = 0; i < n; ++i) { Ma = fmaxf(Ma, p[i * stride]); Mb = fmaxf(Mb, p[i * stride + 2 * fstride]); }
  SoftmaxStats total{Ma, 0.f, Mb, 0.f, 0.f};
  for (int i = 0; i < n; ++i) {
    const float* q = p + i * stride;
    const SoftmaxStats part{q[0], q[fstride], q[2 * fstride], q[3 * fstride], q[4 * fstride]};
    const SoftmaxStats u = shift_stats<kReverse>(part, Ma, Mb, inv_t);
    total.sa += u.sa;
    total.sb += u.sb;
    total.d += u.d;
  }
  return total;
}

// One element's terms at shifts (ma0, mb0): ea = exp((a - ma0) / T) and eb = exp((b - mb0) / T) are added
// to r.sa and r.sb, w diff to r.d, where w = eb forward, ea reverse, and diff = (b - mb0) - (a - ma0)
// forward, its negative reverse (returned). A masked weight (w = 0) adds nothing, not 0 * inf: a
// predicated fused multiply-add, no select.
template <bool kReverse>
__device__ __forceinline__ float add_element(SoftmaxStats& r, float a, float b, float ma0, float mb0, float inv_t, float& ea,
                                             float& eb) {
  ea = exp_over_t(a - ma0, inv_t);  // 0 for a = -inf (a masked class, or a slot beyond the thread's classes)
  eb = exp_over_t(b - mb0, inv_t);
  r.sa += ea;
  r.sb += eb;
  const float w = kReverse ? ea : eb, diff = kReverse ? (a - ma0) - (b - mb0) : (b - mb0) - (a - ma0);
  if (w > 0.f) r.d = fmaf(w, diff, r.d);
  return diff;
}

// The shift of the exponentials for a maximum m: m, or 0 when m = -inf (no finite logit: the
// exponentials are exp(-inf) = 0 all the same), so no element needs a test.
__device__ __forceinline__ float finite_shift(float m) { return m == -INFINITY ? 0.f : m; }

// Online statistics (streaming slots): r's parts so far and kB more elements a, b (-inf for none). The
// maxima rise to the batch's, r is taken to them (shift_stats: exp((old - new) / T) on each sum and on
// d's weights, 2 exponentials a batch), then the batch's terms are added at the new maxima.
template <bool kReverse, int kB>
__device__ __forceinline__ void accumulate_online(SoftmaxStats& r, const float (&a)[kB], const float (&b)[kB], float inv_t) {
  float Ma = r.ma, Mb = r.mb;
#pragma unroll
  for (int i = 0; i < kB; ++i) { Ma = fmaxf(Ma, a[i]); Mb = fmaxf(Mb, b[i]); }
  r = shift_stats<kReverse>(r, Ma, Mb, inv_t);
  const float ma0 = finite_shift(Ma), mb0 = finite_shift(Mb);
#pragma unroll
  for (int i = 0; i < kB; ++i) { float ea, eb; add_element<kReverse>(r, a[i], b[i], ma0, mb0, inv_t, ea, eb); }
}

// One position's T^2-free KL and gradient, from the element slots a thread holds and a Group
// that combines the threads' SoftmaxStats over all threads of the position (identically on each).
// With q = softmax(s / T), p = softmax(t / T):
//   forward:  KL = sum_k p_k (log p_k - log q_k),   d (T^2 KL) / d s_k = T (q_k - p_k)
//   reverse:  KL = sum_k q_k (log q_k - log p_k),   d (T^2 KL) / d s_k = T q_k (log q_k - log p_k - KL)
// where log q_k = (a_k - Ma) / T - log Sa (a, b: the logits as loaded; inv_t = 1 / T). A class with
// q_k = 0 (a -inf logit) gets gradient 0 in the reverse direction. Slots with kKeep (float registers):
// passes over the registers for the maxima, then the sums (2 exponentials each), which keep
// exp((a_k - ma) / T) and, forward, exp((b_k - mb) / T) (reverse: (a_k - ma) - (b_k - mb)) in place of
// a_k, b_k, so the gradient pass needs no exponential. Streaming
// slots: one read for the online statistics, one to write the gradient, recomputing the exponentials.
// Slots: kKeep: each(f) calls f(a, b) for every element the thread holds (f may take them by reference
// and replace them); streaming: batches(f) calls f(a, b) with arrays of the next
// elements (-inf beyond the thread's). write(f) stores f(x, y) of the held (or re-read) values as each
// element's gradient (f already includes gscale). Returns KL on every thread of the position.
template <bool kReverse, typename Slots, typename Group>
__device__ __forceinline__ float kl_position(Slots& x, Group& group, float gscale, float inv_t) {
  SoftmaxStats mine{-INFINITY, 0.f, -INFINITY, 0.f, 0.f};
  if constexpr (Slots::kKeep) {
    x.each([&](float a, float b) { mine.ma = fmaxf(mine.ma, a); mine.mb = fmaxf(mine.mb, b); });
    const float ma0 = finite_shift(mine.ma), mb0 = finite_shift(mine.mb);
    x.each([&](float& a, float& b) {
      float ea, eb;
      const float diff = add_element<kReverse>(mine, a, b, ma0, mb0, inv_t, ea, eb);
      a = ea;
      b = kReverse ? diff : eb;
    });
  } else {
    x.batches([&](const auto& a, const auto& b) { accumulate_online<kReverse>(mine, a, b, inv_t); });
  }
  const float ma = mine.ma, mb = mine.mb;
  const SoftmaxStats all = group.template combine<kReverse>(mine, inv_t);
  const float la = logf(all.sa), lb = logf(all.sb);
  const float weights = kReverse ? all.sa : all.sb;  // 0 when the weighting distribution is all masked: KL 0, as the reference
  const float kl = weights > 0.f ? (kReverse ? all.d * inv_t / all.sa + lb - la : all.d * inv_t / all.sb + la - lb) : 0.f;
  // this thread's factors: q_k = exp((a_k - ma) / T) ca, p_k = exp((b_k - mb) / T) cb
  const float ca = ma == -INFINITY ? 0.f : exp_nat((ma - all.ma) * inv_t - la);
  const float cb = mb == -INFINITY ? 0.f : exp_nat((mb - all.mb) * inv_t - lb);
  if constexpr (Slots::kKeep) {
    const float gca = gscale * ca;  // gscale goes into the thread's factors: a multiplication a class less
    if constexpr (kReverse) {
      // log q_k - log p_k - KL = diff_k / T + c
      const float c = ((ma - all.ma) - (mb - all.mb)) * inv_t - la + lb - kl;
      x.write([&](float ea, float diff) {
        // gscale q_k: 0 where q_k is (a masked class: diff may be infinite), and everywhere for gscale 0
        const float gq = ea * gca;
        return gq != 0.f ? gq * fmaf(diff, inv_t, c) : 0.f;
      });
    } else {
      const float gcb = gscale * cb;
      x.write([&](float ea, float eb) { return ea * gca - eb * gcb; });
    }
  } else {
    x.write([&](float a, float b) {
      const float lq = (a - all.ma) * inv_t - la, lp = (b - all.mb) * inv_t - lb, q = exp_nat(lq);
      return kReverse ? (q > 0.f ? gscale * q * ((lq - lp) - kl) : 0.f) : gscale * (q - exp_nat(lp));
    });
  }
  return kl;
}

// ---- combining SoftmaxStats over the threads of one position ----

constexpr int kStatsFloats = 5;  // floats of a SoftmaxStats in shared memory

// The same lane of every warp of the block (columns kernels): each warp's stats go through shared
// memory `red` (5 * warps * 32 floats) and every warp gathers them in warp order (once per block).
struct WarpsOfBlock {
  float* red;
  int warps, warp, lane;
  template <bool kReverse>
  __device__ __forceinline__ SoftmaxStats combine(const SoftmaxStats& x, float inv_t) {
    float* mine = red + warp * 32 + lane;
    const int fstride = warps * 32;
    mine[0] = x.ma;
    mine[fstride] = x.sa;
    mine[2 * fstride] = x.mb;
    mine[3 * fstride] = x.sb;
    mine[4 * fstride] = x.d;
    __syncthreads();
    return gather_stats<kReverse>(red + lane, warps, 32, fstride, inv_t);
  }
};

// An aligned group of `size` lanes of one warp (a power of two <= 32; rows kernels), by xor
// shuffles: every lane of the warp takes part; results are identical on every lane of the group.
__device__ __forceinline__ SoftmaxStats shuffle_stats(const SoftmaxStats& x, int o) {
  return {__shfl_xor_sync(0xffffffffu, x.ma, o), __shfl_xor_sync(0xffffffffu, x.sa, o), __shfl_xor_sync(0xffffffffu, x.mb, o),
          __shfl_xor_sync(0xffffffffu, x.sb, o), __shfl_xor_sync(0xffffffffu, x.d, o)};
}

struct LanesOfWarp {
  int size;
  template <bool kReverse>
  __device__ __forceinline__ SoftmaxStats combine(SoftmaxStats x, float inv_t) {
    for (int o = size / 2; o > 0; o >>= 1) x = merge_stats<kReverse>(x, shuffle_stats(x, o), inv_t);
    return x;
  }
};

// Every thread of the block (rows kernels with one row per block): a warp butterfly, then the warps'
// stats through shared memory `red` (5 * 32 floats), gathered in warp order.
struct ThreadsOfBlock {
  float* red;
  template <bool kReverse>
  __device__ __forceinline__ SoftmaxStats combine(SoftmaxStats x, float inv_t) {
    x = LanesOfWarp{32}.combine<kReverse>(x, inv_t);
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    if (threadIdx.x % 32 == 0) {
      red[warp] = x.ma;
      red[32 + warp] = x.sa;
      red[64 + warp] = x.mb;
      red[96 + warp] = x.sb;
      red[128 + warp] = x.d;
    }
    __syncthreads();  // one combine per block: `red` is written once
    return gather_stats<kReverse>(red, warps, 1, 32, inv_t);
  }
};

// ---- columns: [N, K, HW], lane = position ----

constexpr int kColumnTile = 32;       // positions per block: one per lane
constexpr int kColumnMaxWarps = 8;    // warps per block (classes split kColumnMaxWarps ways at most)
constexpr int kColumnMaxPerThread = 32;  // classes per thread held in registers (K <= 256)
// Offsets within a sample are 32-bit: the launcher requires (K + kColumnOffsetSlack) HW < 2^31, which
// covers the streaming batches' offsets past a thread's last class too.
constexpr int kColumnOffsetSlack = 64;

// The elements a columns thread holds: `count` classes, `stride` elements apart in memory (the
// thread's classes are warp, warp + warps, ...), of one position. In float registers when kPer > 0
// (count <= kPer; the kPer - count slots beyond hold -inf, a masked class, so the passes over the
// registers need no bounds checks: only the loads and the stores are predicated), else streaming:
// read again for each pass. s, t, g point at the thread's first class, hidden by opaque(); offsets
// from them are 32-bit (below): one IMAD.WIDE an address. With 64-bit offsets nvcc spent about 20% of
// the 32-class kernel's instructions on addresses (sm_90: 2,344 -> 1,864 in fp32, 2,536 -> 2,032 in bf16).
// kFull: K = kPer x warps, so every thread of an active lane holds exactly kPer classes: no clamped
// addresses, no -inf slots and no per-class store predicate (an inactive lane, count 0, computes on
// its sample's position 0, which exists, and stores nothing).
template <typename scalar_t, int kPer, bool kFull = false>
struct ColumnSlots {
  const scalar_t* s;
  const scalar_t* t;
  scalar_t* g;
  int stride;
  int count;
  float rs[kPer > 0 ? kPer : 1], rt[kPer > 0 ? kPer : 1];  // the logits as floats, then kl_position's kept values
  static constexpr bool kKeep = kPer > 0;
  static_assert(!kFull || kPer > 0, "a full tile holds its classes in registers");

  __device__ __forceinline__ bool stores(int i) const { return kFull ? count > 0 : i < count; }

  __device__ __forceinline__ void load() {
    if constexpr (kFull) {
#pragma unroll
      for (int i = 0; i < kPer; ++i) {  // all loads issued before any is used
        rs[i] = to_float(load_nc(s + i * stride));
        rt[i] = to_float(load_nc(t + i * stride));
      }
    } else if constexpr (kPer > 0) {
      // slots beyond the thread's classes read its last one; a thread with none (an inactive lane) reads
      // class `warp` of its sample, which exists: the plans give warps = ceil(K / per) <= K
      const int last = count > 0 ? count - 1 : 0;
      scalar_t raw_s[kPer], raw_t[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) {  // unconditional loads of valid addresses: all issued before any is used
        const int at = (i < last ? i : last) * stride;
        raw_s[i] = load_nc(s + at);
        raw_t[i] = load_nc(t + at);
      }
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        rs[i] = i < count ? to_float(raw_s[i]) : -INFINITY;
        rt[i] = i < count ? to_float(raw_t[i]) : -INFINITY;
      }
    }
  }
  template <typename F>
  __device__ __forceinline__ void each(F&& f) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) f(rs[i], rt[i]);
  }
  template <typename F>
  __device__ __forceinline__ void batches(F&& f) {  // streaming: kBatch classes a batch, their loads issued together
    constexpr int kBatch = 4;
    for (int i0 = 0; i0 < count; i0 += kBatch) {
      float a[kBatch], b[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        a[i] = i0 + i < count ? to_float(load_nc(s + (i0 + i) * stride)) : -INFINITY;
        b[i] = i0 + i < count ? to_float(load_nc(t + (i0 + i) * stride)) : -INFINITY;
      }
      f(a, b);
    }
  }
  template <typename F>
  __device__ __forceinline__ void write(F&& f) {
    if constexpr (kPer > 0) {
#pragma unroll
      for (int i = 0; i < kPer; ++i)
        if (stores(i)) g[i * stride] = from_float<scalar_t>(f(rs[i], rt[i]));
    } else {
      for (int i = 0; i < count; ++i)
        g[i * stride] = from_float<scalar_t>(f(to_float(load_nc(s + i * stride)), to_float(load_nc(t + i * stride))));
    }
  }
};

// s, t: logits [N, K, HW]; loss: [N * HW] float (T^2 KL per position); grad: like s.
// Launch: N * ceil(HW / 32) blocks of 32 * warps threads, 5 * warps * 32 floats of shared memory.
// 32 classes a thread: at most 128 registers, so two blocks of 8 warps fit on an SM (one loads while the
// other computes); fewer classes or streaming: at most 64, four blocks.
template <typename scalar_t, bool kReverse, int kPer, bool kFull>
__global__ void __launch_bounds__(kColumnMaxWarps * 32, kPer == kColumnMaxPerThread ? 2 : 4) kl_columns_kernel(
    const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, float* __restrict__ loss,
    scalar_t* __restrict__ grad, KlArgs args) {
  KDLAB_DYNAMIC_SHARED(float, red);
  // block and class indices in 32 bits (unsigned division: a few instructions, where 64-bit division is a
  // call): the launcher guarantees (K + 64) HW < 2^31 and fewer than 2^31 blocks
  const unsigned tiles = (static_cast<unsigned>(args.HW) + kColumnTile - 1) / kColumnTile;
  const unsigned n = blockIdx.x / tiles;
  const int hw = static_cast<int>((blockIdx.x - n * tiles) * kColumnTile + threadIdx.x % 32);
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const bool active = hw < args.HW;
  const int64_t base = (static_cast<int64_t>(n) * args.K + warp) * args.HW + (active ? hw : 0);  // class `warp` here
  const int count =
      active && warp < args.K ? static_cast<int>(static_cast<unsigned>(args.K - warp + warps - 1) / warps) : 0;
  ColumnSlots<scalar_t, kPer, kFull> x{opaque(s + base), opaque(t + base), opaque(grad + base),
                                       static_cast<int>(warps * args.HW), count};
  const float w = args.total_weight();  // its load issues first, the logits' right after it
  x.load();
  WarpsOfBlock group{red, warps, warp, static_cast<int>(threadIdx.x % 32)};
  const float kl = kl_position<kReverse>(x, group, args.gtemp * w, args.scale);
  if (active && warp == 0) loss[static_cast<int64_t>(n) * args.HW + hw] = w * args.temp * args.temp * kl;
}

// ---- rows: [rows, K], class innermost ----

constexpr int kRowPacks = 4;         // kV-wide loads per tensor and thread held in registers
constexpr int kRowThreads = 256;     // block size when a row takes at most a warp
constexpr int kRowMaxThreads = 512;  // threads of a row in registers (then streaming); <= 128 registers each
constexpr int kRowStreamThreads = 512;      // threads of a streaming row by default (2 rows an SM)
constexpr int kRowStreamMaxThreads = 1024;  // and at most (the launcher's KDLAB_KL_STREAM_THREADS, kl.cu)

// The elements of one row a rows thread holds: packs (kV classes each) first, first + step, ...:
// kR of them in float registers (kR > 0; the logits as floats, -inf for the slots beyond the row or
// of an inactive row: a masked class, so the passes need no bounds checks), or, streaming (kR = 0),
// every pack of the row, read for each pass.
template <typename scalar_t, int kV, int kR>
struct RowSlots {
  using P = Pack<scalar_t, kV>;
  const scalar_t* s;  // this row's student logits
  const scalar_t* t;
  scalar_t* g;
  int first, step, packs;  // packs first, first + step, ... below packs = K / kV
  bool active;
  float rs[kR > 0 ? kR : 1][kV], rt[kR > 0 ? kR : 1][kV];  // the logits as floats, then kl_position's kept values
  static constexpr bool kKeep = kR > 0;

  __device__ __forceinline__ P at(const scalar_t* p, int c) const { return *reinterpret_cast<const P*>(p + c * kV); }
  __device__ __forceinline__ bool held(int i) const { return active && first + step * i < packs; }
  // unconditional loads of valid addresses (a slot beyond the row reads its last pack), all issued together
  __device__ __forceinline__ void load() {
    if constexpr (kR > 0) {
      P ps[kR], pt[kR];
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        const int c = first + step * i;
        ps[i] = at(s, c < packs ? c : packs - 1);
        pt[i] = at(t, c < packs ? c : packs - 1);
      }
#pragma unroll
      for (int i = 0; i < kR; ++i) {
#pragma unroll
        for (int v = 0; v < kV; ++v) {
          rs[i][v] = held(i) ? to_float(ps[i].v[v]) : -INFINITY;
          rt[i][v] = held(i) ? to_float(pt[i].v[v]) : -INFINITY;
        }
      }
    }
  }
  template <typename F>
  __device__ __forceinline__ void each(F&& f) {
#pragma unroll
    for (int i = 0; i < kR; ++i) {
#pragma unroll
      for (int v = 0; v < kV; ++v) f(rs[i][v], rt[i][v]);
    }
  }
  template <typename F>
  __device__ __forceinline__ void batches(F&& f) {  // streaming: kBatch packs a batch, their loads issued together
    constexpr int kBatch = 2;
    if (!active) return;
    for (int c0 = first; c0 < packs; c0 += kBatch * step) {
      P ps[kBatch], pt[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {  // a pack beyond the row reads the row's last one, then is masked
        const int c = c0 + step * i < packs ? c0 + step * i : packs - 1;
        ps[i] = at(s, c);
        pt[i] = at(t, c);
      }
      float a[kBatch * kV], b[kBatch * kV];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
#pragma unroll
        for (int v = 0; v < kV; ++v) {
          a[i * kV + v] = c0 + step * i < packs ? to_float(ps[i].v[v]) : -INFINITY;
          b[i * kV + v] = c0 + step * i < packs ? to_float(pt[i].v[v]) : -INFINITY;
        }
      }
      f(a, b);
    }
  }
  template <typename F>
  __device__ __forceinline__ void write(F&& f) {
    if constexpr (kR > 0) {
#pragma unroll
      for (int i = 0; i < kR; ++i)
        if (held(i)) {
          P out;
#pragma unroll
          for (int v = 0; v < kV; ++v) out.v[v] = from_float<scalar_t>(f(rs[i][v], rt[i][v]));
          *reinterpret_cast<P*>(g + (first + step * i) * kV) = out;
        }
    } else if (active) {
      for (int c = first; c < packs; c += step) {
        const P ps = at(s, c), pt = at(t, c);
        P out;
#pragma unroll
        for (int v = 0; v < kV; ++v) out.v[v] = from_float<scalar_t>(f(to_float(ps.v[v]), to_float(pt.v[v])));
        *reinterpret_cast<P*>(g + c * kV) = out;
      }
    }
  }
};

// s, t: logits [rows = args.N, K]; loss: [rows] float; grad: like s. kBlockRow: one row per block
// (args.group = blockDim.x threads, kR packs each, or streaming with kR = 0); else args.group
// (a power of two <= 32) threads per row and kRowThreads / args.group rows per block. Registers a
// thread: up to 128 with rows sharing a block (two blocks an SM) or a row's registers in one block
// (kBlockRow, kR > 0), 64 streaming (a block of up to 1,024 threads).
template <typename scalar_t, bool kReverse, int kV, int kR, bool kBlockRow>
__global__ void __launch_bounds__(kBlockRow ? (kR > 0 ? kRowMaxThreads : kRowStreamMaxThreads) : kRowThreads,
                                  kBlockRow ? 1 : 2) kl_rows_kernel(
    const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, float* __restrict__ loss,
    scalar_t* __restrict__ grad, KlArgs args) {
  const int G = args.group;  // kBlockRow: blockDim.x; else a power of two: shifts and a mask, no division
  const int shift = log2_pow2(G);
  const int64_t row = kBlockRow ? static_cast<int64_t>(blockIdx.x)
                                : static_cast<int64_t>(blockIdx.x) * (kRowThreads >> shift) + (threadIdx.x >> shift);
  const int lane = kBlockRow ? static_cast<int>(threadIdx.x) : static_cast<int>(threadIdx.x & (G - 1));
  const bool active = row < args.N;
  const int64_t base = (active ? row : 0) * args.K;
  RowSlots<scalar_t, kV, kR> x{s + base, t + base, grad + base, lane, G, args.K / kV, active};
  const float w = args.total_weight();
  x.load();
  float kl;
  if constexpr (kBlockRow) {
    KDLAB_DYNAMIC_SHARED(float, red);
    ThreadsOfBlock group{red};
    kl = kl_position<kReverse>(x, group, args.gtemp * w, args.scale);
  } else {
    LanesOfWarp group{G};
    kl = kl_position<kReverse>(x, group, args.gtemp * w, args.scale);
  }
  if (active && lane == 0) loss[row] = w * args.temp * args.temp * kl;
}

// ---- launch plans (host code; the CUDA launcher and the emulator share it) ----

// gtemp of the kernels: T times d (reduced loss) / d (loss at one position); reduction 0 = none,
// 1 = mean over `positions`, 2 = sum.
inline float kl_grad_scale(float temp, int64_t reduction, int64_t positions) {
  return reduction == 1 ? temp / static_cast<float>(positions) : temp;
}

struct KlPlan {
  int64_t blocks;
  int threads;
  size_t shared;  // dynamic shared memory, bytes
  int group;      // rows: threads per row
  int per;        // columns: classes per thread in registers (0: streaming); rows: packs per thread (0: streaming)
  int vec;        // rows: classes per load (kV)
  bool block_row; // rows: one row per block
  bool full;      // columns: every thread holds exactly `per` classes (kFull)
};

// Columns plan: classes per thread 2, 8 or 32 (K <= 16, 64, 256) and ceil(K / per) warps, else
// streaming with 8 warps. With 32 classes a thread and K a multiple of 32 (K = 96, 128, ..., 256), the
// full-tile kernel (only that size has one: the others' time goes to the combine, not the classes).
inline KlPlan kl_columns_plan(int64_t N, int K, int64_t HW) {
  const int per = K <= 16 ? 2 : K <= 64 ? 8 : K <= kColumnMaxWarps * kColumnMaxPerThread ? kColumnMaxPerThread : 0;
  const int warps = per ? (K + per - 1) / per : kColumnMaxWarps;
  const int64_t blocks = N * ((HW + kColumnTile - 1) / kColumnTile);
  const bool full = per == kColumnMaxPerThread && K % per == 0;
  return {blocks, warps * 32, kStatsFloats * static_cast<size_t>(warps) * 32 * sizeof(float), 0, per, 1, false, full};
}

// Rows plan for classes per load `vec` (K % vec == 0): G = the smallest power of two with
// G * kRowPacks * vec >= K; G <= 32: rows share a block of 256 threads; G <= 512: one row per
// block; beyond, one row per block of `stream_threads` (a multiple of 32, at most 1,024), streaming.
inline KlPlan kl_rows_plan(int64_t rows, int K, int vec, int stream_threads = kRowStreamThreads) {
  const int packs = K / vec;
  int G = 1;
  while (G * kRowPacks < packs && G < 2 * kRowMaxThreads) G *= 2;
  if (G <= 32) {
    const int per_block = kRowThreads / G;
    return {(rows + per_block - 1) / per_block, kRowThreads, 0, G, kRowPacks, vec, false};
  }
  if (G <= kRowMaxThreads) return {rows, G, kStatsFloats * 32 * sizeof(float), G, kRowPacks, vec, true};
  return {rows, stream_threads, kStatsFloats * 32 * sizeof(float), stream_threads, 0, vec, true};
}

// Calls launch(kernel, plan) with the kernel instantiation for a plan (kVec: the wide load of
// scalar_t, 16 bytes; plan.vec is 1 or kVec).
template <typename scalar_t, bool kReverse, typename Launch>
void kl_launch_plan(const KlPlan& plan, bool rows, Launch&& launch) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  if (!rows) {
    switch (plan.per) {
      case 2: return launch(kl_columns_kernel<scalar_t, kReverse, 2, false>, plan);
      case 8: return launch(kl_columns_kernel<scalar_t, kReverse, 8, false>, plan);
      case kColumnMaxPerThread:
        if (plan.full) return launch(kl_columns_kernel<scalar_t, kReverse, kColumnMaxPerThread, true>, plan);
        return launch(kl_columns_kernel<scalar_t, kReverse, kColumnMaxPerThread, false>, plan);
      default: return launch(kl_columns_kernel<scalar_t, kReverse, 0, false>, plan);
    }
  }
  const bool wide = plan.vec == kVec && kVec > 1;
  if (!plan.block_row) {
    if (wide) return launch(kl_rows_kernel<scalar_t, kReverse, kVec, kRowPacks, false>, plan);
    return launch(kl_rows_kernel<scalar_t, kReverse, 1, kRowPacks, false>, plan);
  }
  if (plan.per > 0) {
    if (wide) return launch(kl_rows_kernel<scalar_t, kReverse, kVec, kRowPacks, true>, plan);
    return launch(kl_rows_kernel<scalar_t, kReverse, 1, kRowPacks, true>, plan);
  }
  if (wide) return launch(kl_rows_kernel<scalar_t, kReverse, kVec, 0, true>, plan);
  return launch(kl_rows_kernel<scalar_t, kReverse, 1, 0, true>, plan);
}

template <typename scalar_t, typename Launch>
void kl_dispatch(bool reverse, bool rows, const KlPlan& plan, Launch&& launch) {
  if (reverse) kl_launch_plan<scalar_t, true>(plan, rows, launch);
  else kl_launch_plan<scalar_t, false>(plan, rows, launch);
}

}  // namespace kdlab
