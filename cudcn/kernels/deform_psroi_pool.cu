// deform_psroi_pool kernels: deformable position-sensitive RoI pooling (R-FCN), forward and backward,
// with the original operator's semantics.
//
// Notation (docs/spec.md): input (B, C, H, W) with C = output_dim * group_size^2; rois (R, 5) =
// (batch_index, x1, y1, x2, y2); trans (R, 2 * num_classes, part, part), channel 2 * cls is x and
// 2 * cls + 1 is y, cls = ctop / (output_dim / num_classes); output (R, output_dim, pooled, pooled).
// RoI coordinates are rounded half away from zero (C's round): start = round(x1) * scale - 0.5,
// end = (round(x2) + 1) * scale - 0.5, roi_w = max(end - start, 0.1). Bin (i, j) of output channel
// ctop reads input channel (ctop * group_size + gh) * group_size + gw and starts at
// start + (i, j) * bin + trans * trans_std * roi_size; its sample_per_part^2 samples sit at
// start + k * sub_bin (corner-aligned). A sample outside [-0.5, W - 0.5] x [-0.5, H - 0.5] (or not
// finite) is skipped, the others are clamped into the image and interpolated between floor and ceil;
// the bin is the mean of its valid samples, 0 when there is none.
//
// The helpers psroi_* have the same names and formulas in cudcn/backends/cpu/deform_psroi_pool.py.
// The bilinear rule (floor / ceil, no zero padding) is not common.cuh's, hence its own helper.
//
// Templates: S is the arrays' storage type and T = compute_t<S> the type of every coordinate,
// weight and sum (storage.cuh; float for the 16-bit types, whose gradients are scattered into T
// buffers that the launcher rounds once); I (int or long long) indexes the output and the input,
// chosen by the launcher (cudcn/backends/launch/deform_psroi_pool.py). The launcher validated the batch indices.
#include "common.cuh"

// C's round (halves away from zero) for float and double alike.
template <typename T>
__device__ __forceinline__ T round_half_away(T v) {
  return round(v);
}

// Everything bin (i, j) of output channel ctop of RoI r needs: its input plane (b, c), its first
// sample (h0, w0), the sample spacing, the RoI size, and the trans entries it reads.
template <typename T>
struct PsroiBin {
  int b, c;
  T h0, w0, sub_h, sub_w, roi_h, roi_w;
  long long trans_x;  // index of trans[r, 2 * cls, part_i, part_j]; y is trans_x + part * part
};

template <typename S, typename T>
__device__ __forceinline__ PsroiBin<T> psroi_bin(const S* rois, const S* trans, int r, int ctop,
                                                 int i, int j, T spatial_scale, int output_dim,
                                                 int group_size, int pooled, int part_size,
                                                 int sample_per_part, T trans_std, int num_classes,
                                                 int use_trans) {
  const S* roi = rois + 5 * static_cast<long long>(r);
  const T start_x = round_half_away(widen(roi[1])) * spatial_scale - T(0.5);
  const T start_y = round_half_away(widen(roi[2])) * spatial_scale - T(0.5);
  const T end_x = (round_half_away(widen(roi[3])) + T(1)) * spatial_scale - T(0.5);
  const T end_y = (round_half_away(widen(roi[4])) + T(1)) * spatial_scale - T(0.5);
  PsroiBin<T> bin;
  bin.b = to_int(widen(roi[0]));
  bin.roi_w = max(end_x - start_x, T(0.1));
  bin.roi_h = max(end_y - start_y, T(0.1));
  const T bin_w = bin.roi_w / static_cast<T>(pooled);
  const T bin_h = bin.roi_h / static_cast<T>(pooled);
  const int part_i = i * part_size / pooled;
  const int part_j = j * part_size / pooled;
  const int gh = min(i * group_size / pooled, group_size - 1);
  const int gw = min(j * group_size / pooled, group_size - 1);
  bin.c = (ctop * group_size + gh) * group_size + gw;
  bin.h0 = static_cast<T>(i) * bin_h + start_y;
  bin.w0 = static_cast<T>(j) * bin_w + start_x;
  const int cls = ctop / (output_dim / num_classes);
  bin.trans_x = ((2 * (static_cast<long long>(r) * num_classes + cls)) * part_size + part_i) *
                    part_size + part_j;
  if (use_trans) {
    bin.w0 += widen(trans[bin.trans_x]) * trans_std * bin.roi_w;
    bin.h0 += widen(trans[bin.trans_x + part_size * part_size]) * trans_std * bin.roi_h;
  }
  bin.sub_h = bin_h / static_cast<T>(sample_per_part);
  bin.sub_w = bin_w / static_cast<T>(sample_per_part);
  return bin;
}

// A sample counts when it lies in [-0.5, W - 0.5] x [-0.5, H - 0.5]; false for NaN.
template <typename T>
__device__ __forceinline__ bool psroi_inside(int height, int width, T h, T w) {
  return w >= T(-0.5) && w <= T(width) - T(0.5) && h >= T(-0.5) && h <= T(height) - T(0.5);
}

// An inside sample clamped into the image: its floor / ceil taps and fractions. At an integer
// coordinate both taps coincide, so the value is exact and the derivative along that axis is 0.
template <typename T>
struct PsroiTaps {
  int y0, y1, x0, x1;
  T dist_y, dist_x;
};

template <typename T>
__device__ __forceinline__ PsroiTaps<T> psroi_weights(int height, int width, T h, T w) {
  h = min(max(h, T(0)), static_cast<T>(height - 1));
  w = min(max(w, T(0)), static_cast<T>(width - 1));
  PsroiTaps<T> t;
  t.y0 = to_int(floor(h));
  t.x0 = to_int(floor(w));
  t.y1 = to_int(ceil(h));
  t.x1 = to_int(ceil(w));
  t.dist_y = h - static_cast<T>(t.y0);
  t.dist_x = w - static_cast<T>(t.x0);
  return t;
}

// Number of valid samples of a bin.
template <typename T>
__device__ __forceinline__ int psroi_count(const PsroiBin<T>& bin, int height, int width,
                                           int sample_per_part) {
  int count = 0;
  for (int ih = 0; ih < sample_per_part; ++ih) {
    for (int iw = 0; iw < sample_per_part; ++iw) {
      const T h = bin.h0 + static_cast<T>(ih) * bin.sub_h;
      const T w = bin.w0 + static_cast<T>(iw) * bin.sub_w;
      if (psroi_inside(height, width, h, w)) ++count;
    }
  }
  return count;
}

// out[r, ctop, i, j] = mean of the bin's valid samples. One thread per output element;
// n = R * output_dim * pooled * pooled.
template <typename S, typename I>
__global__ void deform_psroi_pool_forward(const S* __restrict__ input, const S* __restrict__ rois,
                                          const S* __restrict__ trans, S* __restrict__ out, I n,
                                          int channels, int height, int width,
                                          compute_t<S> spatial_scale, int output_dim,
                                          int group_size, int pooled, int part_size,
                                          int sample_per_part, compute_t<S> trans_std,
                                          int num_classes, int use_trans) {
  using T = compute_t<S>;
  CUDCN_KERNEL_LOOP(index, n, I) {
    const int j = static_cast<int>(index % pooled);
    const int i = static_cast<int>(index / pooled % pooled);
    const int ctop = static_cast<int>(index / pooled / pooled % output_dim);
    const int r = static_cast<int>(index / pooled / pooled / output_dim);
    const PsroiBin<T> bin = psroi_bin(rois, trans, r, ctop, i, j, spatial_scale, output_dim,
                                      group_size, pooled, part_size, sample_per_part, trans_std,
                                      num_classes, use_trans);
    const S* plane = input + (static_cast<I>(bin.b) * channels + bin.c) * height * width;
    T sum = T(0);
    int count = 0;
    for (int ih = 0; ih < sample_per_part; ++ih) {
      for (int iw = 0; iw < sample_per_part; ++iw) {
        const T h = bin.h0 + static_cast<T>(ih) * bin.sub_h;
        const T w = bin.w0 + static_cast<T>(iw) * bin.sub_w;
        if (!psroi_inside(height, width, h, w)) continue;
        const PsroiTaps<T> t = psroi_weights(height, width, h, w);
        const T dy = t.dist_y, dx = t.dist_x;
        sum += (T(1) - dx) * (T(1) - dy) * widen(plane[t.y0 * width + t.x0]) +
               (T(1) - dx) * dy * widen(plane[t.y1 * width + t.x0]) +
               dx * (T(1) - dy) * widen(plane[t.y0 * width + t.x1]) +
               dx * dy * widen(plane[t.y1 * width + t.x1]);
        ++count;
      }
    }
    out[index] = narrow<S>(count > 0 ? sum / static_cast<T>(count) : T(0));
  }
}

// grad_input += the samples' bilinear weights times grad_out / count, and, when use_trans,
// grad_trans[r, 2 * cls (+ 1), part_i, part_j] += the derivative along x (y) times trans_std *
// roi_size; both through a Scatter (common.cuh: atomic, or a pass of the deterministic fixed-point
// scatter, scatter_pass), the targets and fixed buffers zeroed. One thread per grad_out element.
template <typename S, typename I>
__global__ void deform_psroi_pool_backward(const S* __restrict__ grad_out,
                                           const S* __restrict__ input, const S* __restrict__ rois,
                                           const S* __restrict__ trans,
                                           compute_t<S>* __restrict__ grad_input,
                                           compute_t<S>* __restrict__ grad_trans,
                                           unsigned long long* __restrict__ fixed_input,
                                           unsigned long long* __restrict__ fixed_trans,
                                           int scatter_pass, I n,
                                           int channels, int height, int width,
                                           compute_t<S> spatial_scale, int output_dim,
                                           int group_size, int pooled, int part_size,
                                           int sample_per_part, compute_t<S> trans_std,
                                           int num_classes, int use_trans) {
  using T = compute_t<S>;
  CUDCN_KERNEL_LOOP(index, n, I) {
    const int j = static_cast<int>(index % pooled);
    const int i = static_cast<int>(index / pooled % pooled);
    const int ctop = static_cast<int>(index / pooled / pooled % output_dim);
    const int r = static_cast<int>(index / pooled / pooled / output_dim);
    const PsroiBin<T> bin = psroi_bin(rois, trans, r, ctop, i, j, spatial_scale, output_dim,
                                      group_size, pooled, part_size, sample_per_part, trans_std,
                                      num_classes, use_trans);
    const int count = psroi_count(bin, height, width, sample_per_part);
    if (count == 0) continue;
    const I plane_start = (static_cast<I>(bin.b) * channels + bin.c) * height * width;
    const S* plane = input + plane_start;
    const Scatter<T> to_input{grad_input, fixed_input, scatter_pass};
    const T g = widen(grad_out[index]) / static_cast<T>(count);
    T sum_x = T(0), sum_y = T(0);
    for (int ih = 0; ih < sample_per_part; ++ih) {
      for (int iw = 0; iw < sample_per_part; ++iw) {
        const T h = bin.h0 + static_cast<T>(ih) * bin.sub_h;
        const T w = bin.w0 + static_cast<T>(iw) * bin.sub_w;
        if (!psroi_inside(height, width, h, w)) continue;
        const PsroiTaps<T> t = psroi_weights(height, width, h, w);
        const T dy = t.dist_y, dx = t.dist_x;
        const int p00 = t.y0 * width + t.x0, p01 = t.y1 * width + t.x0;
        const int p10 = t.y0 * width + t.x1, p11 = t.y1 * width + t.x1;
        to_input.add(plane_start + p00, (T(1) - dx) * (T(1) - dy) * g);
        to_input.add(plane_start + p01, (T(1) - dx) * dy * g);
        to_input.add(plane_start + p10, dx * (T(1) - dy) * g);
        to_input.add(plane_start + p11, dx * dy * g);
        if (!use_trans) continue;
        const T u00 = widen(plane[p00]), u01 = widen(plane[p01]);
        const T u10 = widen(plane[p10]), u11 = widen(plane[p11]);
        // g multiplies each sample's slope (as in the reference), so inf * 0 is NaN, not skipped.
        sum_x += (u11 * dy + u10 * (T(1) - dy) - u01 * dy - u00 * (T(1) - dy)) * g;
        sum_y += (u11 * dx + u01 * (T(1) - dx) - u10 * dx - u00 * (T(1) - dx)) * g;
      }
    }
    if (use_trans) {
      const Scatter<T> to_trans{grad_trans, fixed_trans, scatter_pass};
      to_trans.add(bin.trans_x, sum_x * trans_std * bin.roi_w);
      to_trans.add(bin.trans_x + part_size * part_size, sum_y * trans_std * bin.roi_h);
    }
  }
}
