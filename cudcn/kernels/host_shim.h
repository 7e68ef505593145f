// host_shim.h: the part of the CUDA language cudcn's kernels use, for a host C++20 compiler.
//
// The emulated backend (cudcn/backends/emulated) compiles, with g++, the very source text the CUDA
// backend hands to NVRTC; common.cuh includes this header when __CUDACC__ is undefined. It
// supplies __global__ / __device__ / __forceinline__, dim3 and the thread-local builtins threadIdx,
// blockIdx, blockDim, gridDim, atomicAdd on std::atomic_ref, the math functions device code calls
// unqualified, and a launcher.
//
// Execution model. A launch runs every block of the grid. Blocks are handed out one at a time (an
// atomic counter) to `workers` OS threads; on its worker, a block's threads run one after another
// in threadIdx order, x fastest. That is a legal CUDA schedule for kernels without __shared__
// memory and __syncthreads(), i.e. all of cudcn's kernels so far. Those two are deliberately left
// undefined, so a kernel that needs them fails to build for the host instead of running wrong.
//
// Fiber mode (planned, for __shared__ + __syncthreads()): give `launch` a mode, recorded per kernel
// in the export table. In that mode a worker runs a block's threads as fibers (a small stack each,
// ucontext's makecontext / swapcontext); __syncthreads() switches to the block's next fiber and
// returns once every fiber of the block has reached it; __shared__ expands to
// `static thread_local`, so each worker owns the shared memory of the one block it runs. The
// serial loop stays the fast path for kernels that need neither.
#ifndef CUDCN_HOST_SHIM_H
#define CUDCN_HOST_SHIM_H

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

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
using std::round;

template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}

template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}

// CUDA's atomicAdd: adds value to *address atomically and returns the old value.
template <typename T>
inline T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}

namespace cudcn_host {

// Return codes of a launch entry.
enum LaunchStatus : int { kLaunchOk = 0, kLaunchBadConfig = 1 };

// One row of the table an emulated build exports (see cudcn/backends/emulated/build.py).
using LaunchFunction = int (*)(const unsigned int* grid, const unsigned int* block,
                               void* const* args, int workers);

struct KernelEntry {
  const char* name_expression;  // as given to NVRTC, e.g. "deform_conv2d_im2col<float, int>"
  LaunchFunction launch;
  const char* signature;  // parameter codes, space separated (type_code below)
};

// "f4", "f8", "i4", "i8", "u4", ... for scalars; "p" + element code for a pointer, "cp" + element
// code for a pointer to const. The Python loader checks each launch argument against these.
template <typename A>
std::string type_code() {
  if constexpr (std::is_pointer_v<A>) {
    using Element = std::remove_pointer_t<A>;
    return (std::is_const_v<Element> ? "cp" : "p") + type_code<std::remove_cv_t<Element>>();
  } else {
    static_assert(std::is_arithmetic_v<A> && !std::is_same_v<A, bool>,
                  "kernel parameters must be pointers or arithmetic scalars");
    const char kind = std::is_floating_point_v<A> ? 'f' : (std::is_signed_v<A> ? 'i' : 'u');
    return kind + std::to_string(sizeof(A));
  }
}

template <typename... Params>
const char* signature_of(void (*)(Params...)) {
  static const std::string text = [] {
    std::string codes;
    ((codes += type_code<Params>() + " "), ...);
    if (!codes.empty()) codes.pop_back();
    return codes;
  }();
  return text.c_str();
}

// Runs kernel over grid x block. args[i] points at the value of parameter i, as in cuLaunchKernel.
template <typename... Params>
int launch(void (*kernel)(Params...), const unsigned int* grid, const unsigned int* block,
           void* const* args, int workers) {
  const unsigned long long threads = 1ull * block[0] * block[1] * block[2];
  const unsigned long long blocks = 1ull * grid[0] * grid[1] * grid[2];
  if (threads == 0 || threads > 1024 || block[2] > 64 || blocks == 0 || grid[0] > 2147483647u ||
      grid[1] > 65535 || grid[2] > 65535) {
    return kLaunchBadConfig;
  }
  const std::tuple<Params...> values = [args]<std::size_t... I>(std::index_sequence<I...>) {
    return std::tuple<Params...>(*static_cast<Params*>(args[I])...);
  }(std::index_sequence_for<Params...>{});

  std::atomic<unsigned long long> next_block{0};
  auto work = [&] {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    for (unsigned long long b; (b = next_block.fetch_add(1)) < blocks;) {
      blockIdx = {static_cast<unsigned int>(b % grid[0]),
                  static_cast<unsigned int>(b / grid[0] % grid[1]),
                  static_cast<unsigned int>(b / grid[0] / grid[1])};
      for (unsigned int z = 0; z < block[2]; ++z) {
        for (unsigned int y = 0; y < block[1]; ++y) {
          for (unsigned int x = 0; x < block[0]; ++x) {
            threadIdx = {x, y, z};
            std::apply(kernel, values);
          }
        }
      }
    }
  };

  const unsigned long long helpers =
      std::min<unsigned long long>(blocks, workers > 1 ? workers : 1) - 1;
  std::vector<std::thread> pool;
  try {
    for (unsigned long long i = 0; i < helpers; ++i) pool.emplace_back(work);
  } catch (const std::system_error&) {
    // Fewer threads than asked for: the blocks are still all run, by the threads that did start.
  }
  work();
  for (std::thread& t : pool) t.join();
  return kLaunchOk;
}

template <auto Kernel>
int launch_entry(const unsigned int* grid, const unsigned int* block, void* const* args,
                 int workers) {
  return launch(Kernel, grid, block, args, workers);
}

template <auto Kernel>
KernelEntry entry(const char* name_expression) {
  return {name_expression, &launch_entry<Kernel>, signature_of(Kernel)};
}

}  // namespace cudcn_host

#endif  // CUDCN_HOST_SHIM_H
