// host_shim.h: the part of the CUDA language cudcn's kernels use, for a host C++20 compiler.
//
// The emulated backend (cudcn/backends/emulated) compiles, with g++, the very source text the CUDA
// backend hands to NVRTC; common.cuh includes this header when __CUDACC__ is undefined. It
// supplies __global__ / __device__ / __forceinline__, dim3 and the builtins threadIdx, blockIdx,
// blockDim, gridDim, atomics, block and warp cooperation, the math functions device code calls
// unqualified, GPU float rules, and a launcher.
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

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

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

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

namespace cudcn_host {

// Return codes of a launch entry.
enum LaunchStatus : int {
  kLaunchOk = 0,
  kLaunchBadConfig = 1,
  kLaunchNeedsConcurrent = 2,  // a cooperating kernel was launched in serial mode
  kLaunchNoThreads = 3,        // not one block's worth of OS threads could be started
};

// How a launch runs (filled by cudcn/backends/emulated/loader.py).
struct LaunchConfig {
  int workers;          // blocks in flight at once
  int concurrent;       // 1: one OS thread per CUDA thread; 0: the serial fast path
  unsigned long long seed;  // shuffles the block order
};

// Thrown by a cooperation primitive in serial mode; ends the launch with kLaunchNeedsConcurrent.
struct NeedsConcurrent : std::exception {};

// Waits until every live participant has arrived. drop() removes a participant for good (a
// thread that returned), so the others never wait for it, as on a GPU.
class Barrier {
 public:
  void reset(unsigned participants) {
    std::lock_guard<std::mutex> lock(mutex_);
    expected_ = participants;
    arrived_ = 0;
  }

  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned long long generation = generation_;
    if (++arrived_ >= expected_) {
      release();
    } else {
      ready_.wait(lock, [&] { return generation != generation_; });
    }
  }

  void drop() {
    std::lock_guard<std::mutex> lock(mutex_);
    --expected_;
    if (arrived_ > 0 && arrived_ >= expected_) release();
  }

 private:
  void release() {
    arrived_ = 0;
    ++generation_;
    ready_.notify_all();
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  unsigned expected_ = 0, arrived_ = 0;
  unsigned long long generation_ = 0;
};

[[noreturn]] inline void trap(const char* what) {
  std::fprintf(stderr, "cudcn emulated kernel error: %s\n", what);
  std::abort();  // as a GPU trap ends the context
}

// One warp of a running block: a barrier over its live lanes and a slot per lane for exchanges.
struct Warp {
  Barrier barrier;
  std::mutex mutex;
  unsigned live = 0;  // lanes that have not returned
  unsigned existing = 0;  // lanes the block has
  unsigned long long slots[32];

  void start(unsigned lanes) {
    existing = live = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
    barrier.reset(lanes);
  }

  void leave(unsigned lane) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      live &= ~(1u << lane);
    }
    barrier.drop();
  }
};

// The state the threads of one running block share.
struct Block {
  Barrier gate;  // all threads of the block, between blocks
  Barrier sync;  // __syncthreads over the live threads
  std::vector<Warp> warps;
  std::mutex shared_mutex;
  std::vector<std::unique_ptr<unsigned char[]>> shared;  // CUDCN_SHARED_ARRAY storage, in order
  unsigned long long block = 0;  // linear index of the block being run
};

inline thread_local Block* current_block = nullptr;  // null in serial mode
inline thread_local std::size_t shared_cursor = 0;

inline unsigned linear_thread() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

inline Block& cooperating_block() {
  if (current_block == nullptr) throw NeedsConcurrent{};
  return *current_block;
}

// The n-th shared array a thread of the block declares: the same storage for every thread of the
// block, filled with 0xff bytes (NaN for floats) since CUDA leaves shared memory uninitialised.
template <typename T, std::size_t N>
T* shared_array() {
  Block& block = cooperating_block();
  const std::size_t index = shared_cursor++;
  std::lock_guard<std::mutex> lock(block.shared_mutex);
  if (index == block.shared.size()) {
    block.shared.emplace_back(new unsigned char[sizeof(T) * N]);
    std::memset(block.shared.back().get(), 0xff, sizeof(T) * N);
  }
  return reinterpret_cast<T*>(block.shared[index].get());
}

struct Lane {
  Warp& warp;
  unsigned lane;
};

inline Lane this_lane(unsigned mask) {
  Block& block = cooperating_block();
  const unsigned id = linear_thread();
  Warp& warp = block.warps[id / 32];
  {
    std::lock_guard<std::mutex> lock(warp.mutex);
    if ((mask & warp.live) != warp.live) {
      trap("a warp primitive's mask leaves out a lane that is still running");
    }
  }
  return {warp, id % 32};
}

// Every live lane publishes `bits`; returns the bits lane `source` published.
inline unsigned long long exchange(Lane self, unsigned long long bits, unsigned source) {
  self.warp.slots[self.lane] = bits;
  self.warp.barrier.wait();
  if (!(self.warp.existing >> source & 1u)) trap("a shuffle reads a lane the block does not have");
  const unsigned long long got = self.warp.slots[source];
  self.warp.barrier.wait();  // nobody overwrites a slot before every lane has read
  return got;
}

template <typename T>
T shuffle(unsigned mask, T value, int source, int width) {
  static_assert(sizeof(T) <= sizeof(unsigned long long) && std::is_trivially_copyable_v<T>);
  const Lane self = this_lane(mask);
  unsigned long long bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  const unsigned segment = self.lane & ~static_cast<unsigned>(width - 1);
  const unsigned lane = source < 0 ? self.lane : segment + static_cast<unsigned>(source);
  bits = exchange(self, bits, lane);
  T result;
  std::memcpy(&result, &bits, sizeof(T));
  return result;
}

inline int lane_in_segment(int width) {
  return static_cast<int>(linear_thread() % 32) & (width - 1);
}

// Floating-point environment of GPU float kernels: flush-to-zero and denormals-are-zero.
class FlushDenormals {
 public:
  explicit FlushDenormals(bool enable) : enabled_(enable) {
    if (!enabled_) return;
#if defined(__x86_64__) || defined(__i386__)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040u);  // FTZ (bit 15) and DAZ (bit 6)
#elif defined(__aarch64__)
    saved_ = __builtin_aarch64_get_fpcr64();
    __builtin_aarch64_set_fpcr64(saved_ | (1ull << 24));  // FZ
#endif
  }
  ~FlushDenormals() {
    if (!enabled_) return;
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(static_cast<unsigned>(saved_));
#elif defined(__aarch64__)
    __builtin_aarch64_set_fpcr64(saved_);
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  bool enabled_;
  unsigned long long saved_ = 0;
};

// A kernel is a float kernel (flushes denormals) when a parameter is float and none is double.
template <typename A>
using element_t = std::remove_cv_t<std::remove_pointer_t<A>>;

template <typename... Params>
constexpr bool flushes_denormals =
    (std::is_same_v<element_t<Params>, float> || ...) &&
    !(std::is_same_v<element_t<Params>, double> || ...);

inline dim3 block_index(unsigned long long b, const unsigned int* grid) {
  return {static_cast<unsigned int>(b % grid[0]), static_cast<unsigned int>(b / grid[0] % grid[1]),
          static_cast<unsigned int>(b / grid[0] / grid[1])};
}

// One row of the table an emulated build exports (see cudcn/backends/emulated/build.py).
using LaunchFunction = int (*)(const unsigned int* grid, const unsigned int* block,
                               void* const* args, const LaunchConfig* config);

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

// The blocks of a launch in shuffled order, handed out one at a time.
class BlockQueue {
 public:
  BlockQueue(unsigned long long blocks, unsigned long long seed) : order_(blocks) {
    std::iota(order_.begin(), order_.end(), 0ull);
    std::mt19937_64 random(seed);
    std::shuffle(order_.begin(), order_.end(), random);
  }
  // The next block's linear index, or `none`.
  unsigned long long next() {
    const unsigned long long i = next_.fetch_add(1);
    return i < order_.size() ? order_[i] : none;
  }
  static constexpr unsigned long long none = ~0ull;

 private:
  std::vector<unsigned long long> order_;
  std::atomic<unsigned long long> next_{0};
};

// Starts `count` threads running body(i); returns how many started (thread creation can fail).
template <typename Body>
unsigned long long start_threads(std::vector<std::thread>& pool, unsigned long long count,
                                 Body body) {
  for (unsigned long long i = 0; i < count; ++i) {
    try {
      pool.emplace_back(body, i);
    } catch (const std::system_error&) {
      return i;
    }
  }
  return count;
}

template <typename Kernel, typename Values>
int run_serial(Kernel kernel, const Values& values, const unsigned int* grid,
               const unsigned int* block, BlockQueue& queue, int workers, bool flush) {
  std::atomic<bool> needs_concurrent{false};
  auto work = [&](unsigned long long) {
    FlushDenormals mode(flush);
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    current_block = nullptr;
    try {
      for (unsigned long long b; !needs_concurrent && (b = queue.next()) != BlockQueue::none;) {
        blockIdx = block_index(b, grid);
        for (unsigned int z = 0; z < block[2]; ++z) {
          for (unsigned int y = 0; y < block[1]; ++y) {
            for (unsigned int x = 0; x < block[0]; ++x) {
              threadIdx = {x, y, z};
              std::apply(kernel, values);
            }
          }
        }
      }
    } catch (const NeedsConcurrent&) {
      needs_concurrent = true;
    }
  };
  std::vector<std::thread> pool;
  start_threads(pool, static_cast<unsigned long long>(std::max(workers, 1)) - 1, work);
  work(0);  // the calling thread works too: enough to finish, whatever start_threads managed
  for (std::thread& t : pool) t.join();
  return needs_concurrent ? kLaunchNeedsConcurrent : kLaunchOk;
}

// Opened once by the launching thread; the threads it started wait for it before doing anything.
class StartGate {
 public:
  void open() {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = true;
    opened_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    opened_.wait(lock, [&] { return open_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable opened_;
  bool open_ = false;
};

template <typename Kernel, typename Values>
int run_concurrent(Kernel kernel, const Values& values, const unsigned int* grid,
                   const unsigned int* block, BlockQueue& queue, unsigned long long groups,
                   bool flush) {
  const unsigned threads = block[0] * block[1] * block[2];
  std::vector<std::unique_ptr<Block>> blocks;
  for (unsigned long long g = 0; g < groups; ++g) {
    blocks.push_back(std::make_unique<Block>());
    blocks.back()->gate.reset(threads);
    blocks.back()->warps = std::vector<Warp>((threads + 31) / 32);
  }
  // Prepares a block for its next grid block; run by its thread 0 while the others wait.
  auto assign = [&](Block& b) {
    b.sync.reset(threads);
    for (unsigned w = 0; w < b.warps.size(); ++w) b.warps[w].start(std::min(32u, threads - 32 * w));
    b.shared.clear();
    b.block = queue.next();
  };
  StartGate start;
  unsigned long long runnable_groups = 0;  // written before start.open(), read after
  auto body = [&](unsigned long long i) {
    start.wait();
    if (i / threads >= runnable_groups) return;  // its group could not get all of its threads
    FlushDenormals mode(flush);
    Block& b = *blocks[i / threads];
    const unsigned t = static_cast<unsigned>(i % threads);
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    threadIdx = {t % block[0], t / block[0] % block[1], t / block[0] / block[1]};
    current_block = &b;
    for (;;) {
      if (t == 0) assign(b);
      b.gate.wait();  // the block is assigned
      if (b.block == BlockQueue::none) break;
      blockIdx = block_index(b.block, grid);
      shared_cursor = 0;
      std::apply(kernel, values);
      b.sync.drop();
      b.warps[t / 32].leave(t % 32);
      b.gate.wait();  // every thread of the block has returned
    }
  };
  std::vector<std::thread> pool;
  runnable_groups = start_threads(pool, groups * threads, body) / threads;
  start.open();
  for (std::thread& t : pool) t.join();
  return runnable_groups > 0 ? kLaunchOk : kLaunchNoThreads;
}

// Runs kernel over grid x block. args[i] points at the value of parameter i, as in cuLaunchKernel.
template <typename... Params>
int launch(void (*kernel)(Params...), const unsigned int* grid, const unsigned int* block,
           void* const* args, const LaunchConfig* config) {
  const unsigned long long threads = 1ull * block[0] * block[1] * block[2];
  const unsigned long long blocks = 1ull * grid[0] * grid[1] * grid[2];
  if (threads == 0 || threads > 1024 || block[2] > 64 || blocks == 0 || grid[0] > 2147483647u ||
      grid[1] > 65535 || grid[2] > 65535) {
    return kLaunchBadConfig;
  }
  const std::tuple<Params...> values = [args]<std::size_t... I>(std::index_sequence<I...>) {
    return std::tuple<Params...>(*static_cast<Params*>(args[I])...);
  }(std::index_sequence_for<Params...>{});
  BlockQueue queue(blocks, config->seed);
  const int workers = std::max(config->workers, 1);
  constexpr bool flush = flushes_denormals<Params...>;
  if (!config->concurrent) return run_serial(kernel, values, grid, block, queue, workers, flush);
  const unsigned long long groups = std::min<unsigned long long>(blocks, workers);
  return run_concurrent(kernel, values, grid, block, queue, groups, flush);
}

template <auto Kernel>
int launch_entry(const unsigned int* grid, const unsigned int* block, void* const* args,
                 const LaunchConfig* config) {
  return launch(Kernel, grid, block, args, config);
}

template <auto Kernel>
KernelEntry entry(const char* name_expression) {
  return {name_expression, &launch_entry<Kernel>, signature_of(Kernel)};
}

}  // namespace cudcn_host

// Block and warp cooperation (concurrent mode only; see the execution model above).
inline void __syncthreads() { cudcn_host::cooperating_block().sync.wait(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  cudcn_host::this_lane(mask).warp.barrier.wait();
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int source, int width = 32) {
  return cudcn_host::shuffle(mask, value, source & (width - 1), width);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  const int lane = cudcn_host::lane_in_segment(width) + static_cast<int>(delta);
  return cudcn_host::shuffle(mask, value, lane < width ? lane : -1, width);
}

template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  const int lane = cudcn_host::lane_in_segment(width) - static_cast<int>(delta);
  return cudcn_host::shuffle(mask, value, lane >= 0 ? lane : -1, width);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  const int lane = cudcn_host::lane_in_segment(width) ^ lane_mask;
  return cudcn_host::shuffle(mask, value, lane < width ? lane : -1, width);
}

// The predicates of the live lanes in mask, one bit per lane.
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const cudcn_host::Lane self = cudcn_host::this_lane(mask);
  self.warp.slots[self.lane] = predicate != 0;
  self.warp.barrier.wait();
  unsigned voters;
  {
    std::lock_guard<std::mutex> lock(self.warp.mutex);
    voters = mask & self.warp.live;
  }
  unsigned bits = 0;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if ((voters >> lane & 1u) && self.warp.slots[lane] != 0) bits |= 1u << lane;
  }
  self.warp.barrier.wait();
  return bits;
}

inline int __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, !predicate) == 0;
}

inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }

#define CUDCN_SHARED_ARRAY(T, name, N) T* const name = cudcn_host::shared_array<T, N>()

#endif  // CUDCN_HOST_SHIM_H
