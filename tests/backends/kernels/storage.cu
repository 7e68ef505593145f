// Test kernels for the storage conversions of cudcn/kernels/storage.cuh (see test_storage.py):
// widen every element of a storage array to float, and narrow every float to a storage type.
#include "../../../cudcn/kernels/common.cuh"

template <typename S>
__global__ void widen_all(const S* __restrict__ in, float* __restrict__ out, int n) {
  CUDCN_KERNEL_LOOP(i, n, int) { out[i] = widen(in[i]); }
}

template <typename S>
__global__ void narrow_all(const float* __restrict__ in, S* __restrict__ out, int n) {
  CUDCN_KERNEL_LOOP(i, n, int) { out[i] = narrow<S>(in[i]); }
}
