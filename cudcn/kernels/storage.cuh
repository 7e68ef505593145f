// storage.cuh: the storage types of cudcn's kernels and their conversions to and from the types
// kernels compute in. A kernel is instantiated for a storage type S (float, double, cudcn_half,
// cudcn_bfloat16) and computes in compute_t<S> (S itself, float for the 16-bit types): it widens
// every element it loads and narrows every result it stores, once.
//
#ifndef CUDCN_STORAGE_CUH
#define CUDCN_STORAGE_CUH

// The 16-bit storage types are header-free so that NVRTC needs no cuda_fp16.h / cuda_bf16.h and the
// host build uses the very same code: the bits of an IEEE binary16 (float16) and of a bfloat16
// (the top half of a float32). Kernels never compute in them: every element is widened to its
// compute type (compute_t, float for both) on load, and a result is narrowed once, rounding to
// nearest even as NumPy's and ml_dtypes' astype do, when it is stored. The conversions are integer
// bit manipulation, so they give the same bits on every GPU and on the host, flush-to-zero or not.
struct cudcn_half {
  unsigned short bits;
};
struct cudcn_bfloat16 {
  unsigned short bits;
};

// The type a kernel computes in for storage type S.
template <typename S>
struct ComputeType {
  using type = S;
};
template <>
struct ComputeType<cudcn_half> {
  using type = float;
};
template <>
struct ComputeType<cudcn_bfloat16> {
  using type = float;
};
template <typename S>
using compute_t = typename ComputeType<S>::type;

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }

// float16 -> float32, exact: normal, subnormal (renormalised), zero, infinity and NaN (payload kept).
__device__ __forceinline__ float widen(cudcn_half h) {
  const unsigned sign = static_cast<unsigned>(h.bits & 0x8000u) << 16;
  const unsigned exponent = (h.bits >> 10) & 0x1fu;
  unsigned mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return __uint_as_float(sign);
  unsigned biased = 113;  // float32 exponent field of 2**-14, the subnormals' scale
  while (!(mantissa & 0x400u)) {
    mantissa <<= 1;
    --biased;
  }
  return __uint_as_float(sign | (biased << 23) | ((mantissa & 0x3ffu) << 13));
}

// bfloat16 -> float32, exact.
__device__ __forceinline__ float widen(cudcn_bfloat16 b) {
  return __uint_as_float(static_cast<unsigned>(b.bits) << 16);
}

// `units >> shift` rounded to nearest, ties to even (shift in [1, 31]).
__device__ __forceinline__ unsigned shift_round_even(unsigned units, unsigned shift) {
  const unsigned kept = units >> shift;
  const unsigned rest = units & ((1u << shift) - 1u);
  const unsigned half = 1u << (shift - 1u);
  return kept + ((rest > half || (rest == half && (kept & 1u))) ? 1u : 0u);
}

// A compute value stored as S: identity for float and double, round to nearest even for 16 bits.
template <typename S>
__device__ __forceinline__ S narrow(compute_t<S> v) {
  return v;
}

// float32 -> float16: overflow to infinity, gradual underflow to subnormals, NaN stays NaN (quiet).
template <>
__device__ __forceinline__ cudcn_half narrow<cudcn_half>(float v) {
  const unsigned x = __float_as_uint(v);
  const unsigned short sign = static_cast<unsigned short>((x >> 16) & 0x8000u);
  const unsigned magnitude = x & 0x7fffffffu;
  if (magnitude > 0x7f800000u) {  // NaN: quiet, top payload bits kept
    return {static_cast<unsigned short>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu))};
  }
  if (magnitude >= 0x477ff000u) return {static_cast<unsigned short>(sign | 0x7c00u)};  // >= 65520
  if (magnitude >= 0x38800000u) {  // a normal float16: rebias the exponent, round 13 bits off
    return {static_cast<unsigned short>(sign | shift_round_even(magnitude - 0x38000000u, 13))};
  }
  if (magnitude < 0x33000000u) return {sign};  // below 2**-25: rounds to zero
  // A float16 subnormal, in units of 2**-24: the float's significand shifted by 126 - exponent.
  const unsigned significand = (magnitude & 0x7fffffu) | 0x800000u;
  return {static_cast<unsigned short>(sign | shift_round_even(significand, 126u - (magnitude >> 23)))};
}

// float32 -> bfloat16: drop the low 16 bits, rounding to nearest even; NaN stays NaN (quiet).
template <>
__device__ __forceinline__ cudcn_bfloat16 narrow<cudcn_bfloat16>(float v) {
  const unsigned x = __float_as_uint(v);
  if ((x & 0x7fffffffu) > 0x7f800000u) return {static_cast<unsigned short>((x >> 16) | 0x40u)};
  return {static_cast<unsigned short>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16)};
}

#endif  // CUDCN_STORAGE_CUH
