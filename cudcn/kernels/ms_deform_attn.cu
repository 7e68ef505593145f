// ms_deform_attn kernels: the deformable-aggregation core (multi-scale deformable attention), forward
// and backward, as a direct gather (no column buffer).
//
// Notation (docs/spec.md, cudcn/ops/ms_deform_attn.py): value (N, S, M, D), channels last, level l
// at rows start_l .. start_l + H_l * W_l of S; locations (N, Q, M, L, P, 2) as (x, y); weights
// (N, Q, M, L, P); out (N, Q, M, D). level_table holds one int row (H_l, W_l, start_l) per level.
// With `normalized`, point (l, p) samples level l at x = loc_x * W_l - 0.5, y = loc_y * H_l - 0.5;
// otherwise at (loc_x, loc_y) in pixels. The bilinear rule is deform_conv2d's (common.cuh).
//     out[n, q, m, d] = sum_{l, p} w * v_d(y, x)
// Every product is computed, w * 0 for a point outside included (docs/spec.md, non-finite values).
//
// Work split: one warp per group (n, q, m); lane k handles channels d = k, k + 32, ... The grid-stride
// loop runs over n = groups * 32 threads; n and the block size (the launcher checks) are multiples
// of 32, so the 32 lanes of a warp always hold the same group and leave the loop together: every
// lane reaches every shuffle of the backward.
//
// Templates: S is the storage type of value, weights, out and their gradients; T = compute_t<S>
// (float for the 16-bit types) the type of the locations, every coordinate and sum, of
// grad_locations and of the value gradient's scatter target, which the launcher rounds once. I (int
// or long long) indexes every array, chosen by the launcher (cudcn/backends/launch/ms_deform_attn.py).
#include "common.cuh"

constexpr int kWarp = 32;

// Sum of v over the 32 lanes of a warp, in a fixed tree (lane 0 gets the total): deterministic, no
// atomics. Every lane of the warp must call it.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Where point (l, p) of a group samples its level: the level's geometry and the pixel coordinates.
template <typename T, typename I>
struct LevelPoint {
  int height, width;
  I start;  // the level's first row of S
  T y, x;
};

template <typename T, typename I>
__device__ __forceinline__ LevelPoint<T, I> level_point(const int* level_table, int l,
                                                         const T* location, int normalized) {
  LevelPoint<T, I> at;
  at.height = level_table[3 * l];
  at.width = level_table[3 * l + 1];
  at.start = level_table[3 * l + 2];
  at.x = location[0];
  at.y = location[1];
  if (normalized) {
    at.x = at.x * static_cast<T>(at.width) - T(0.5);
    at.y = at.y * static_cast<T>(at.height) - T(0.5);
  }
  return at;
}

// out[n, q, m, d] = sum over the group's L * P points of w * sample. n = N * Q * M * 32.
template <typename S, typename I>
__global__ void ms_deform_attn_forward(const S* __restrict__ value,
                                       const compute_t<S>* __restrict__ locations,
                                       const S* __restrict__ weights,
                                       const int* __restrict__ level_table, S* __restrict__ out,
                                       I n, int queries, int heads, int channels, int levels,
                                       int points, int spatial, int normalized) {
  using T = compute_t<S>;
  CUDCN_KERNEL_LOOP(index, n, I) {
    const I group = index / kWarp;  // (b, q, m) flattened
    const int lane = static_cast<int>(index % kWarp);
    const int m = static_cast<int>(group % heads);
    const I b = group / heads / queries;
    const I pixel_stride = static_cast<I>(heads) * channels;
    for (int d = lane; d < channels; d += kWarp) {
      T sum = T(0);
      for (int l = 0; l < levels; ++l) {
        const I point0 = (group * levels + l) * points;
        for (int p = 0; p < points; ++p) {
          const LevelPoint<T, I> at =
              level_point<T, I>(level_table, l, locations + 2 * (point0 + p), normalized);
          const S* plane = value + ((b * spatial + at.start) * heads + m) * channels + d;
          const T sample = bilinear_sample(plane, at.height, at.width, at.y, at.x, pixel_stride);
          sum += widen(weights[point0 + p]) * sample;
        }
      }
      out[group * channels + d] = narrow<S>(sum);
    }
  }
}

// Gradients of the group (b, q, m) for grad_out[b, q, m, :] = g:
//     grad_value  += bilinear_scatter of w * g_d at each point (through a Scatter: atomic, or a pass
//                    of the deterministic fixed-point scatter, scatter_pass); grad_value (T) and
//                    fixed_value must be zeroed;
//     grad_weights = sum_d g_d * v_d,
//     grad_locations (x, y) = w * (sum_d g_d * dv_d / dx, dy), times (W_l, H_l) when normalized.
// The channel sums: each lane sums its channels, warp_sum adds the lanes, lane 0 writes. Every
// grad_weights and grad_locations element is written (in both passes, the same value).
// n = N * Q * M * 32.
template <typename S, typename I>
__global__ void ms_deform_attn_backward(const S* __restrict__ grad_out, const S* __restrict__ value,
                                        const compute_t<S>* __restrict__ locations,
                                        const S* __restrict__ weights,
                                        const int* __restrict__ level_table,
                                        compute_t<S>* __restrict__ grad_value,
                                        unsigned long long* __restrict__ fixed_value,
                                        compute_t<S>* __restrict__ grad_locations,
                                        S* __restrict__ grad_weights, int scatter_pass, I n,
                                        int queries, int heads, int channels, int levels,
                                        int points, int spatial, int normalized) {
  using T = compute_t<S>;
  const Scatter<T> to_value{grad_value, fixed_value, scatter_pass};
  CUDCN_KERNEL_LOOP(index, n, I) {
    const I group = index / kWarp;
    const int lane = static_cast<int>(index % kWarp);
    const int m = static_cast<int>(group % heads);
    const I b = group / heads / queries;
    const I pixel_stride = static_cast<I>(heads) * channels;
    for (int l = 0; l < levels; ++l) {
      const I point0 = (group * levels + l) * points;
      for (int p = 0; p < points; ++p) {
        const I point = point0 + p;
        const LevelPoint<T, I> at =
            level_point<T, I>(level_table, l, locations + 2 * point, normalized);
        const I plane = ((b * spatial + at.start) * heads + m) * channels;
        const T w = widen(weights[point]);
        T sum_value = T(0), sum_y = T(0), sum_x = T(0);
        for (int d = lane; d < channels; d += kWarp) {
          const T g = widen(grad_out[group * channels + d]);
          T v, dv_dy, dv_dx;
          bilinear_sample_grad(value + plane + d, at.height, at.width, at.y, at.x, v, dv_dy, dv_dx,
                               pixel_stride);
          sum_value += g * v;
          sum_y += g * dv_dy;
          sum_x += g * dv_dx;
          bilinear_scatter(to_value, plane + d, at.height, at.width, at.y, at.x, w * g,
                           pixel_stride);
        }
        sum_value = warp_sum(sum_value);
        sum_y = warp_sum(sum_y);
        sum_x = warp_sum(sum_x);
        if (lane == 0) {
          const T scale_x = normalized ? static_cast<T>(at.width) : T(1);
          const T scale_y = normalized ? static_cast<T>(at.height) : T(1);
          grad_weights[point] = narrow<S>(sum_value);
          grad_locations[2 * point] = w * sum_x * scale_x;
          grad_locations[2 * point + 1] = w * sum_y * scale_y;
        }
      }
    }
  }
}
