// Device helpers shared by kdlab's kernels, written once for two compilers:
// - nvcc (kl.cu, attention.cu): the real CUDA build;
// - a host C++ compiler with KDLAB_SIMT_EMULATOR defined (tools/simt/launch.cpp): the same kernel
//   source runs on the CPU under a SIMT emulator (tools/simt/simt.hpp) that schedules every CUDA
//   thread as a fiber, so the kernels' indexing, barriers and warp shuffles are tested without a GPU.
// Kernels include only this header (no ATen), so both builds see identical kernel code.
#pragma once

#ifdef KDLAB_SIMT_EMULATOR
#include "simt.hpp"  // tools/simt/, on the include path of the emulator build
// dynamic shared memory of the launch (the emulator allocates exactly the requested bytes)
#define KDLAB_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::simt::dynamic_shared())
#else
#include <cstdint>
#include <cstring>
#include <type_traits>
#define KDLAB_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace kdlab {

// Sum of v over the warp, identical on every lane (every lane must call it). The butterfly order is
// fixed, so the result is bitwise reproducible.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the block, identical on every thread (blockDim.x a multiple of 32); `red` holds
// blockDim.x / 32 floats of shared memory. Partial sums are added in warp order (deterministic).
__device__ __forceinline__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // `red` may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < warps; ++w) total += red[w];
  return total;
}

// *p through the read-only data path (ld.global.nc, LDG.E.CONSTANT), for data no thread of the launch writes:
// what nvcc chooses itself for a const __restrict__ pointer it can follow, but not for one that
// went through opaque() (kl_kernel.cuh). 4- and 2-byte types (float, c10::Half, c10::BFloat16).
template <typename T>
__device__ __forceinline__ T load_nc(const T* p) {
#ifdef KDLAB_SIMT_EMULATOR
  return *p;
#else
  static_assert(sizeof(T) == 4 || sizeof(T) == 2, "load_nc: 4- or 2-byte values");
  using Bits = std::conditional_t<sizeof(T) == 4, unsigned int, unsigned short>;
  const Bits bits = __ldg(reinterpret_cast<const Bits*>(p));
  T v;
  memcpy(&v, &bits, sizeof(T));
  return v;
#endif
}

// log2 of a power of two x > 0 (one instruction: a division by x becomes a shift)
__device__ __forceinline__ int log2_pow2(int x) {
#ifdef KDLAB_SIMT_EMULATOR
  return __builtin_ctz(static_cast<unsigned>(x));
#else
  return __ffs(x) - 1;
#endif
}

// Storage type <-> float. c10::Half / c10::BFloat16 convert with round-to-nearest-even in their
// float constructors, so one static_cast serves every dtype.
template <typename scalar_t>
__device__ __forceinline__ float to_float(scalar_t x) { return static_cast<float>(x); }

template <typename scalar_t>
__device__ __forceinline__ scalar_t from_float(float v) { return static_cast<scalar_t>(v); }

}  // namespace kdlab
