// RoIAlign's sampling rule, shared by the deform_roi_pool kernels (and so by roi_align, their
// offset-free case): RoI geometry, samples per bin, and the bilinear rule. A sample is 0 outside
// [-1, H] x [-1, W]; inside, it is clamped to >= 0 and snapped to the last row / column when
// floor >= size - 1 (docs/spec.md). The same helpers, by the same names, are the CPU backend's
// cudcn/backends/cpu/roi_align.py; the float64 definition is cudcn/reference/roi_align.py. The range
// test fails for NaN and runs before any float -> int conversion, so a non-finite offset contributes
// 0 and reads nothing.
#ifndef CUDCN_ROI_ALIGN_CUH
#define CUDCN_ROI_ALIGN_CUH

#include "common.cuh"

// One RoI in input pixels: batch index, start (y, x) and size (h, w).
template <typename T>
struct RoiAlignGeometry {
  int b;
  T start_y, start_x, roi_h, roi_w;
};

template <typename S, typename T>
__device__ __forceinline__ RoiAlignGeometry<T> roi_align_geometry(const S* roi, T spatial_scale,
                                                                  int aligned) {
  const T shift = aligned ? T(0.5) : T(0);
  RoiAlignGeometry<T> g;
  g.b = to_int(widen(roi[0]));
  g.start_x = widen(roi[1]) * spatial_scale - shift;
  g.start_y = widen(roi[2]) * spatial_scale - shift;
  g.roi_w = (widen(roi[3]) * spatial_scale - shift) - g.start_x;
  g.roi_h = (widen(roi[4]) * spatial_scale - shift) - g.start_y;
  if (!aligned) {
    g.roi_w = max(g.roi_w, T(1));
    g.roi_h = max(g.roi_h, T(1));
  }
  return g;
}

// Samples per bin along one axis: sampling_ratio, or ceil(roi_size / pooled) when it is 0.
template <typename T>
__device__ __forceinline__ int roi_align_grid(T roi_size, int pooled, int sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  return max(to_int(ceil(roi_size / static_cast<T>(pooled))), 0);
}

// RoIAlign's range [-1, H] x [-1, W]; false for NaN.
template <typename T>
__device__ __forceinline__ bool roi_align_inside(int height, int width, T y, T x) {
  return y >= T(-1) && y <= T(height) && x >= T(-1) && x <= T(width);
}

// Taps and fractions of an inside point after the clamp and the snap. y_moves is false where the
// point was clamped or snapped along y: the derivative along y is then 0 (x alike).
template <typename T>
struct RoiAlignTaps {
  int y_low, y_high, x_low, x_high;
  T ly, lx;
  bool y_moves, x_moves;
};

template <typename T>
__device__ __forceinline__ RoiAlignTaps<T> roi_align_weights(int height, int width, T y, T x) {
  RoiAlignTaps<T> t;
  t.y_moves = y > T(0);
  t.x_moves = x > T(0);
  y = max(y, T(0));
  x = max(x, T(0));
  t.y_low = to_int(y);
  t.x_low = to_int(x);
  if (t.y_low >= height - 1) {
    t.y_low = t.y_high = height - 1;
    y = static_cast<T>(t.y_low);
    t.y_moves = false;
  } else {
    t.y_high = t.y_low + 1;
  }
  if (t.x_low >= width - 1) {
    t.x_low = t.x_high = width - 1;
    x = static_cast<T>(t.x_low);
    t.x_moves = false;
  } else {
    t.x_high = t.x_low + 1;
  }
  t.ly = y - static_cast<T>(t.y_low);
  t.lx = x - static_cast<T>(t.x_low);
  return t;
}

#endif  // CUDCN_ROI_ALIGN_CUH
