// host_cooperation.h: __syncthreads, shared memory and warp primitives for the emulator's
// concurrent mode (see the execution model in host_shim.h). Every CUDA thread of a running block is
// an OS thread; the threads of one block share a Block (barriers, shared arrays, warps of 32 lanes).
// In serial mode these primitives throw NeedsConcurrent, which ends the launch with an error.
#ifndef CUDCN_HOST_COOPERATION_H
#define CUDCN_HOST_COOPERATION_H

#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

namespace cudcn_host {

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
  // All threads of the block, before and after each grid block. Two barriers, not one: a thread
  // that finished its kernel must not lock the mutex that a slower thread locks to start it, or
  // ThreadSanitizer would see that as ordering their accesses and miss races between them.
  Barrier gate_in, gate_out;
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

// Every live lane publishes `bits`; returns the bits lane `source` published. Reading a lane that
// has returned is a trap: on a GPU the value read from an inactive lane is undefined.
inline unsigned long long exchange(Lane self, unsigned long long bits, unsigned source) {
  self.warp.slots[self.lane] = bits;
  self.warp.barrier.wait();
  if (!(self.warp.existing >> source & 1u)) trap("a shuffle reads a lane the block does not have");
  {
    std::lock_guard<std::mutex> lock(self.warp.mutex);
    if (!(self.warp.live >> source & 1u)) {
      trap("a shuffle reads a lane that has returned (its value is undefined on a GPU)");
    }
  }
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
#endif  // CUDCN_HOST_COOPERATION_H
