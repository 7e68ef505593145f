// host_launch.h: the emulator's launcher (see the execution model in host_shim.h): the launch
// configuration, the GPU float environment of float kernels, the shuffled block queue, the serial
// and concurrent runners, and the export table's entries (parameter codes the loader checks).
#ifndef CUDCN_HOST_LAUNCH_H
#define CUDCN_HOST_LAUNCH_H

#include <algorithm>
#include <atomic>
#include <memory>
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

// The 16-bit storage types (defined in storage.cuh, after this header).
struct cudcn_half;
struct cudcn_bfloat16;

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

// "f4", "f8", "i4", "i8", "u4", ... for scalars, "f2" for cudcn_half and "bf2" for cudcn_bfloat16
// (storage.cuh); "p" + element code for a pointer, "cp" + element code for a pointer to const. The
// Python loader checks each launch argument against these.
template <typename A>
std::string type_code() {
  if constexpr (std::is_same_v<A, ::cudcn_half>) {
    return "f2";
  } else if constexpr (std::is_same_v<A, ::cudcn_bfloat16>) {
    return "bf2";
  } else if constexpr (std::is_pointer_v<A>) {
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
    // Relaxed: the order is fixed before any worker starts, and a stronger order would make
    // ThreadSanitizer see blocks fetched one after another as ordered, hiding races between them.
    const unsigned long long i = next_.fetch_add(1, std::memory_order_relaxed);
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
    blocks.back()->gate_in.reset(threads);
    blocks.back()->gate_out.reset(threads);
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
      b.gate_in.wait();  // the block is assigned
      if (b.block == BlockQueue::none) break;
      blockIdx = block_index(b.block, grid);
      shared_cursor = 0;
      std::apply(kernel, values);
      b.sync.drop();
      b.warps[t / 32].leave(t % 32);
      b.gate_out.wait();  // every thread of the block has returned
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

#endif  // CUDCN_HOST_LAUNCH_H
