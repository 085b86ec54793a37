// A small SIMT emulator: runs CUDA kernel source on the CPU, one fiber (ucontext) per CUDA thread,
// so kdlab's kernels are tested on machines without a GPU. It is a checker, not a fast simulator:
//
// - Threads of a block run one at a time, each until its next barrier (__syncthreads, __syncwarp,
//   a warp shuffle) or its end, in a chosen order (ascending, descending or shuffled thread ids).
//   A kernel whose result depends on that order has a data race (a missing barrier).
// - Barriers are checked as on real hardware: __syncthreads must be reached by every thread of the
//   block at the same call site, a warp shuffle or __syncwarp by every lane of its mask; a thread
//   that exits or waits elsewhere is reported (on a GPU: a hang or undefined behaviour).
// - Dynamic shared memory is allocated with exactly the launch's size, filled with NaN (reading
//   memory never written poisons the result) and followed by an inaccessible guard page (an
//   out-of-bounds access is reported with the block, the thread and the offset).
//
// Supported: 1-D grids and blocks, dynamic shared memory, __syncthreads, __syncwarp,
// __shfl_xor_sync (width 32), float math from <math.h>. Blocks run one after another.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <string>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

namespace simt {

const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
void* dynamic_shared();
// `file` and `line` name the call site, for messages and for matching barriers
void sync_block(const char* file, int line);
void sync_warp(unsigned mask, const char* file, int line);
float shfl_xor(unsigned mask, float value, int lane_mask, int width, const char* file, int line);

}  // namespace simt

#define threadIdx (::simt::thread_idx())
#define blockIdx (::simt::block_idx())
#define blockDim (::simt::block_dim())
#define gridDim (::simt::grid_dim())

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::simt::sync_block(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::simt::sync_warp(mask, file, line);
}
inline float __shfl_xor_sync(unsigned mask, float value, int lane_mask, int width = 32,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::simt::shfl_xor(mask, value, lane_mask, width, file, line);
}
