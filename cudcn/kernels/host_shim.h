// host_shim.h: the part of the CUDA language cudcn's kernels use, for a host C++20 compiler.
//
// The emulated backend (cudcn/backends/emulated) compiles, with g++, the very source text the CUDA
// backend hands to NVRTC; common.cuh includes this header when __CUDACC__ is undefined. This file
// supplies __global__ / __device__ / __forceinline__, dim3 and the builtins threadIdx, blockIdx,
// blockDim, gridDim, the math functions device code calls unqualified, the GPU's float rules and
// atomics; host_cooperation.h the block and warp cooperation primitives; host_launch.h the
// launcher and the export table's entries.
//
// Execution model. A launch runs every block of the grid, in an order shuffled by the launch's
// seed (a GPU promises no block order). `workers` blocks are in flight at once. Two modes:
//   * concurrent: every CUDA thread of a block is an OS thread, so the threads of a block really
//     run at the same time, as on a GPU, and ThreadSanitizer sees each one as a thread of its own.
//     __syncthreads() is a barrier over the block's live threads, CUDCN_SHARED_ARRAY memory is
//     per block, and __syncwarp / __shfl_*_sync / __ballot_sync work over warps of 32 lanes
//     (linear thread id / 32). A thread that returns leaves its block's and warp's barriers.
//   * serial (the fast path for plain functional runs): a worker runs a block's threads one after
//     another in threadIdx order, x fastest. That is a legal schedule only for kernels that do not
//     cooperate; a kernel calling a cooperation primitive fails the launch (kLaunchNeedsConcurrent)
//     instead of running wrong.
// The plain `__shared__` keyword is deliberately undefined: kernels declare shared memory with
// CUDCN_SHARED_ARRAY (common.cuh), which is `__shared__` under a CUDA compiler.
//
// GPU float rules (what CuPy's NVRTC build does, see cudcn/backends/cuda/loader.py):
//   * float kernels flush denormals (CuPy always compiles with -ftz=true): a kernel whose
//     parameters include float and no double runs with the CPU's flush-to-zero and
//     denormals-are-zero modes on (x86 MXCSR, AArch64 FPCR), saved and restored around it;
//   * no multiply-add contraction on either side (NVRTC --fmad=false, g++ -ffp-contract=off);
//   * min / max of floating values are fmin / fmax: a NaN operand yields the other one, as CUDA's;
//   * float -> int conversions in kernels go through __float2int_rz / __double2int_rz, which
//     truncate and saturate (NaN -> 0) like PTX cvt.rzi.s32, instead of x86's INT_MIN.
#ifndef CUDCN_HOST_SHIM_H
#define CUDCN_HOST_SHIM_H

#include <atomic>
#include <bit>
#include <climits>
#include <cmath>
#include <type_traits>

// A kernel stays a real (hidden) function, so gdb can break on it and the symbol table names it.
#define __global__ __attribute__((noinline))
#define __device__
#define __host__
#define __forceinline__ __attribute__((always_inline)) inline

struct dim3 {
  unsigned int x, y, z;
};

inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

// Device code calls these unqualified with float or double arguments (CUDA overloads them).
using std::ceil;
using std::floor;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::round;

// CUDA's min / max: fmin / fmax for floating values (a NaN operand yields the other operand).
template <typename T>
inline T min(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) return std::fmin(a, b);
  return b < a ? b : a;
}

template <typename T>
inline T max(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) return std::fmax(a, b);
  return a < b ? b : a;
}

// Truncation toward zero that saturates at the int range and gives 0 for NaN (PTX cvt.rzi.s32).
inline int __double2int_rz(double v) {
  if (std::isnan(v)) return 0;
  if (v >= 2147483648.0) return INT_MAX;
  if (v <= -2147483649.0) return INT_MIN;
  return static_cast<int>(v);
}

inline int __float2int_rz(float v) { return __double2int_rz(static_cast<double>(v)); }

// Reinterpreting a float's bits, as CUDA's intrinsics do.
inline unsigned int __float_as_uint(float v) { return std::bit_cast<unsigned int>(v); }
inline float __uint_as_float(unsigned int v) { return std::bit_cast<float>(v); }
inline long long __double_as_longlong(double v) { return std::bit_cast<long long>(v); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }

// Round to nearest even, to a 64-bit integer (callers keep |v| < 2**62).
inline long long __double2ll_rn(double v) { return std::llrint(v); }

// CUDA's atomics: update *address atomically and return the old value.
template <typename T>
inline T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}

template <typename T>
inline T atomicCAS(T* address, T compare, T value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value, std::memory_order_relaxed);
  return compare;  // the old value, whether or not it was replaced
}

template <typename T>
inline T atomicMax(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (old < value && !ref.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
  }
  return old;
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

#include "host_cooperation.h"
#include "host_launch.h"

#endif  // CUDCN_HOST_SHIM_H
