// Shared device helpers of the cudcn kernels: bilinear sampling with one pixel of zero padding, its
// derivatives with respect to the sampling point, its transpose (a scatter, atomic or fixed-point
// deterministic), and the grid-stride loop every kernel is written as.
//
// Names and formulas mirror the Numba CPU backend (sample_in_range, bilinear_weights,
// bilinear_sample) and cudcn/reference.py (bilinear_corners), to be read side by side. The CPU's
// fused bilinear_backward is split here into bilinear_scatter (input gradient, atomicAdd) and
// bilinear_sample_grad (value and derivatives, for the offset and mask gradients).
//
// The sampling rule is docs/spec.md's: the four neighbours floor(y), floor(y) + 1 x floor(x),
// floor(x) + 1 are weighted bilinearly and a neighbour outside the image counts as 0. A point uses
// no neighbour unless -1 <= y < height and -1 <= x < width; at y = -1 exactly the formula gives the
// value 0 (the one neighbour inside has weight 0) and the forward-difference derivative v(0) - 0,
// as the reference and torchvision do. The range test fails for NaN and runs before any float->int
// conversion: a non-finite point contributes 0 and never touches memory.
//
// This header compiles under NVRTC, nvcc and g++. Under a host compiler (__CUDACC__ undefined) it
// includes cudcn's host shim, which supplies __global__, threadIdx, atomicAdd, ... for the emulated
// backend. Nothing CUDA-only is included outside the __CUDACC__ guard.
#ifndef CUDCN_COMMON_CUH
#define CUDCN_COMMON_CUH

#ifdef __CUDACC__
// Shared memory, declared the one way both compilers understand (host_shim.h has the host side).
#define CUDCN_SHARED_ARRAY(T, name, N) __shared__ T name[N]
#else
#include "host_shim.h"
#endif
#include "storage.cuh"

// float -> int as the GPU converts: truncation toward zero, saturating at the int range, NaN -> 0
// (PTX cvt.rzi.s32). A plain static_cast is undefined out of range and gives INT_MIN on x86.
__device__ __forceinline__ int to_int(float v) { return __float2int_rz(v); }
__device__ __forceinline__ int to_int(double v) { return __double2int_rz(v); }

// Grid-stride loop over [0, n): every kernel of cudcn is one, so any grid size is correct. I is the
// index type (int or long long, chosen by the launcher from the largest element count).
#define CUDCN_KERNEL_LOOP(i, n, I)                                              \
  for (I i = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) +          \
             static_cast<I>(threadIdx.x);                                       \
       i < (n); i += static_cast<I>(blockDim.x) * static_cast<I>(gridDim.x))

// True when (y, x) lies in [-1, height) x [-1, width), where a sample may use a neighbour. False
// for NaN and infinities.
template <typename T>
__device__ __forceinline__ bool sample_in_range(T y, T x, int height, int width) {
  return y >= T(-1) && y < T(height) && x >= T(-1) && x < T(width);
}

// Top-left neighbour (y0, x0) = (floor(y), floor(x)) of an in-range point and the fractional parts
// (ly, lx); y0 is in [-1, height - 1] and x0 in [-1, width - 1].
template <typename T>
struct BilinearWeights {
  int y0, x0;
  T ly, lx;
};

template <typename T>
__device__ __forceinline__ BilinearWeights<T> bilinear_weights(T y, T x) {
  const T fy = floor(y);
  const T fx = floor(x);
  return {to_int(fy), to_int(fx), y - fy, x - fx};
}

// The four neighbours of an in-range point, v<row><column> for rows y0, y0 + 1 and columns x0,
// x0 + 1 (a neighbour outside the image reads 0), with the point's fractional parts.
template <typename T>
struct BilinearCorners {
  T v00, v01, v10, v11;
  T ly, lx;
};

// `plane` holds storage type S, read as T; pixel (r, c) is plane[(r * width + c) * stride] (stride
// 1: a plain (height, width) plane; ms_deform_attn's channels-last value has stride M * D).
template <typename S, typename T, typename I = int>
__device__ __forceinline__ BilinearCorners<T> bilinear_corners(const S* plane, int height,
                                                               int width, T y, T x,
                                                               I stride = 1) {
  const BilinearWeights<T> w = bilinear_weights(y, x);
  const bool top = w.y0 >= 0, bottom = w.y0 + 1 < height;
  const bool left = w.x0 >= 0, right = w.x0 + 1 < width;
  const I i00 = w.y0 * width + w.x0;  // may be negative: used only for neighbours that exist
  BilinearCorners<T> c;
  c.v00 = (top && left) ? widen(plane[i00 * stride]) : T(0);
  c.v01 = (top && right) ? widen(plane[(i00 + 1) * stride]) : T(0);
  c.v10 = (bottom && left) ? widen(plane[(i00 + width) * stride]) : T(0);
  c.v11 = (bottom && right) ? widen(plane[(i00 + width + 1) * stride]) : T(0);
  c.ly = w.ly;
  c.lx = w.lx;
  return c;
}

// Bilinear value of a (height, width) plane at (y, x); 0 unless the point is in range. `stride` as
// in bilinear_corners.
template <typename S, typename T, typename I = int>
__device__ __forceinline__ T bilinear_sample(const S* plane, int height, int width, T y, T x,
                                             I stride = 1) {
  if (!sample_in_range(y, x, height, width)) return T(0);
  const BilinearCorners<T> c = bilinear_corners(plane, height, width, y, x, stride);
  const T hy = T(1) - c.ly, hx = T(1) - c.lx;
  return hy * (hx * c.v00 + c.lx * c.v01) + c.ly * (hx * c.v10 + c.lx * c.v11);
}

// The value and its derivatives d value / dy, d value / dx, of the same floor-based formula: at an
// integer coordinate the derivative is the forward difference v(y + 1) - v(y). All 0 out of range.
// `stride` as in bilinear_corners.
template <typename S, typename T, typename I = int>
__device__ __forceinline__ void bilinear_sample_grad(const S* plane, int height, int width, T y,
                                                     T x, T& value, T& grad_y, T& grad_x,
                                                     I stride = 1) {
  if (!sample_in_range(y, x, height, width)) {
    value = grad_y = grad_x = T(0);
    return;
  }
  const BilinearCorners<T> c = bilinear_corners(plane, height, width, y, x, stride);
  const T hy = T(1) - c.ly, hx = T(1) - c.lx;
  value = hy * (hx * c.v00 + c.lx * c.v01) + c.ly * (hx * c.v10 + c.lx * c.v11);
  grad_y = hx * (c.v10 - c.v00) + c.lx * (c.v11 - c.v01);
  grad_x = hy * (c.v01 - c.v00) + c.ly * (c.v11 - c.v10);
}

// v * 2**s by exponent arithmetic (no ldexp call: this runs once per contribution). One
// multiplication, exact, when 2**s is a normal double; else two, each by a normal power of two,
// exact unless the result underflows. |s| stays below 1200 (see Scatter).
__device__ __forceinline__ double pow2(int e) {  // e in [-1022, 1023]
  return __longlong_as_double(static_cast<long long>(e + 1023) << 52);
}

__device__ __forceinline__ double times_pow2(double v, int s) {
  if (s > 1023) return v * pow2(1023) * pow2(s - 1023);
  if (s < -1022) return v * pow2(-1022) * pow2(s + 1022);
  return v * pow2(s);
}

// E with |v| < 2**E for a finite v, from its biased exponent b: E = b - 1022 (a subnormal, b = 0,
// is below 2**-1022). For a count c >= 1 converted to double (rounded to nearest), c < 2**E too.
__device__ __forceinline__ int magnitude_exponent(double v) {
  return static_cast<int>((__double_as_longlong(v) >> 52) & 0x7ff) - 1022;
}

// Where a backward kernel's scatter goes, in one of three passes (the launcher's `scatter_pass`;
// cudcn/backends/launch/common.py, ScatterTarget; docs/determinism.md has the design and the bound):
//   * kScatterAtomic: atomicAdd on T, fast, but the order of the additions, and so the last bits of
//     the sums, varies from run to run.
//   * kScatterSurvey (deterministic mode, first launch): per destination element, the count m of
//     its finite nonzero contributions (integer atomicAdd) and the largest E of them (atomicMax of
//     E + kExponentBias), both order-free, into words 2 and 3 of the element's record.
//   * kScatterAdd (second launch, the same contributions): with m < 2**L, s = 62 - E - L and
//     k = 62 - L, x = value * 2**s is split into a high word round(x) and a low word
//     round((x - round(x)) * 2**k), added with integer atomicAdds (two's complement on unsigned
//     long long) into words 0 and 1: exact, so no order changes either sum, and neither sum can
//     reach 2**63. The launcher converts the two back.
// Each destination has its own scale, so a huge value elsewhere in the launch costs it nothing. A
// non-finite value skips the survey and goes to target with atomicAdd: a sum of NaNs and
// infinities is the same in any order.
enum : int { kScatterAtomic = 0, kScatterSurvey = 1, kScatterAdd = 2 };
constexpr long long kExponentBias = 2048;  // a recorded exponent is > 0; 0 means no contribution

template <typename T>
struct Scatter {
  T* target;
  unsigned long long* fixed;  // deterministic passes: 4 words per element of target
  int pass;

  template <typename I>
  __device__ __forceinline__ void add(I index, T value) const {
    if (pass == kScatterAtomic || !isfinite(value)) {
      if (pass != kScatterSurvey) atomicAdd(target + index, value);
      return;
    }
    if (value == T(0)) return;
    unsigned long long* record = fixed + 4 * static_cast<long long>(index);
    const double v = static_cast<double>(value);
    if (pass == kScatterSurvey) {
      atomicAdd(record + 2, 1ull);
      atomicMax(record + 3, static_cast<unsigned long long>(magnitude_exponent(v) + kExponentBias));
      return;
    }
    const int width = magnitude_exponent(static_cast<double>(record[2]));  // m < 2**width
    const int exponent = static_cast<int>(static_cast<long long>(record[3]) - kExponentBias);
    const double x = times_pow2(v, 62 - exponent - width);  // exact unless it underflows
    const long long high = __double2ll_rn(x);
    const long long low = __double2ll_rn(times_pow2(x - static_cast<double>(high), 62 - width));
    atomicAdd(record, static_cast<unsigned long long>(high));
    atomicAdd(record + 1, static_cast<unsigned long long>(low));
  }
};

// Transpose of bilinear_sample: adds weight * value to each neighbour of (y, x) inside the
// (height, width) plane that starts at element `plane` of the scatter's target, through `scatter`
// since the neighbours of different sampling points coincide. Nothing out of range. `stride` as in
// bilinear_corners.
template <typename T, typename I>
__device__ __forceinline__ void bilinear_scatter(const Scatter<T>& scatter, I plane, int height,
                                                 int width, T y, T x, T value, I stride = 1) {
  if (!sample_in_range(y, x, height, width)) return;
  const BilinearWeights<T> w = bilinear_weights(y, x);
  const T hy = T(1) - w.ly, hx = T(1) - w.lx;
  const bool top = w.y0 >= 0, bottom = w.y0 + 1 < height;
  const bool left = w.x0 >= 0, right = w.x0 + 1 < width;
  const I i00 = plane + static_cast<I>(w.y0 * width + w.x0) * stride;
  const I row = static_cast<I>(width) * stride;
  if (top && left) scatter.add(i00, hy * hx * value);
  if (top && right) scatter.add(i00 + stride, hy * w.lx * value);
  if (bottom && left) scatter.add(i00 + row, w.ly * hx * value);
  if (bottom && right) scatter.add(i00 + row + stride, w.ly * w.lx * value);
}

#endif  // CUDCN_COMMON_CUH
