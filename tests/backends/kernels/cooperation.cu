// Test kernels for the emulator's cooperation primitives (tests/backends/test_host_shim.py): each one is
// correct CUDA (tests/backends/test_nvrtc.py compiles this file too) whose result is wrong unless the
// threads of a block really share memory, wait at barriers and exchange values within warps.
#include "../../../cudcn/kernels/common.cuh"

// out[b * n + t] = in[b * n + n - 1 - t]: every thread reads what another one wrote to shared
// memory before the barrier. One block per row; blockDim.x = n <= 256.
template <typename T>
__global__ void block_reverse(const T* __restrict__ in, T* __restrict__ out) {
  CUDCN_SHARED_ARRAY(T, tile, 256);
  const unsigned n = blockDim.x, t = threadIdx.x;
  const unsigned long long row = static_cast<unsigned long long>(blockIdx.x) * n;
  tile[t] = in[row + t];
  __syncthreads();
  out[row + t] = tile[n - 1 - t];
}

// sums[w] = the sum of warp w's values by shuffle-down (lane 0 writes), and total[w] the same by
// an xor butterfly as every lane sees it (lane 31 writes); votes[w] = ballot of value > 0.
__global__ void warp_reduce(const float* __restrict__ values, float* __restrict__ sums,
                            float* __restrict__ total, unsigned* __restrict__ votes) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
  const float v = values[i];
  float down = v, butterfly = v;
  for (int delta = 16; delta > 0; delta /= 2) {
    down += __shfl_down_sync(0xffffffffu, down, delta);
    butterfly += __shfl_xor_sync(0xffffffffu, butterfly, delta);
  }
  const unsigned vote = __ballot_sync(0xffffffffu, v > 0.0f);
  if (lane == 0) sums[i / 32] = down;
  if (lane == 31) total[i / 32] = butterfly;
  if (lane == 0) votes[i / 32] = vote;
}

// Threads t >= count return at once; the others still meet at __syncthreads (a GPU does not wait
// for exited threads). out[t] = in[count - 1 - t] for t < count.
__global__ void early_exit(const int* __restrict__ in, int* __restrict__ out, int count) {
  CUDCN_SHARED_ARRAY(int, tile, 256);
  const int t = static_cast<int>(threadIdx.x);
  if (t >= count) return;
  tile[t] = in[t];
  __syncthreads();
  out[t] = tile[count - 1 - t];
}

// Lanes t >= count return; the others sum values[0 .. 31] by shuffle-down over the whole warp, so
// for count < 32 they read lanes that have returned: an undefined value on a GPU, a trap in the
// emulator (test_host_shim.py). Lane 0 writes the sum.
__global__ void shuffle_from_returned(const float* __restrict__ values, float* __restrict__ sum,
                                      int count) {
  const int t = static_cast<int>(threadIdx.x);
  if (t >= count) return;
  float v = values[t];
  for (int delta = 16; delta > 0; delta /= 2) v += __shfl_down_sync(0xffffffffu, v, delta);
  if (t == 0) *sum = v;
}

// *sum += values[i] over one block's threads: racy_sum with a plain read-add-write (a data race,
// for the race check to find), atomic_sum with atomicAdd (no race).
__global__ void racy_sum(const double* __restrict__ values, double* __restrict__ sum) {
  *sum += values[threadIdx.x];
}

__global__ void atomic_sum(const double* __restrict__ values, double* __restrict__ sum) {
  atomicAdd(sum, values[threadIdx.x]);
}

// out[b] = saturating float -> int conversion of in[b] (the GPU's rule, see host_shim.h), and
// flushed[b] = in[b] * scale, where a denormal input or result flushes to zero in float kernels.
__global__ void float_rules(const float* __restrict__ in, int* __restrict__ out,
                            float* __restrict__ flushed, float* __restrict__ largest, float scale,
                            int n) {
  CUDCN_KERNEL_LOOP(i, n, int) {
    out[i] = to_int(in[i]);
    flushed[i] = in[i] * scale;
    largest[i] = max(in[i], 1.0f);
  }
}

// ticket[b] = the order in which block b started (thread 0 of each block takes a ticket).
__global__ void block_order(unsigned* __restrict__ counter, unsigned* __restrict__ ticket) {
  if (threadIdx.x == 0) ticket[blockIdx.x] = atomicAdd(counter, 1u);
}
