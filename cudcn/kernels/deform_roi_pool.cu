// deform_roi_pool kernels: deformable RoIAlign (mmcv's semantics), forward and backward. roi_align is
// the same computation without offset (aligned = 0 gives torchvision's aligned=False geometry).
//
// Notation (docs/spec.md): input (B, C, H, W); rois (R, 5) = (batch_index, x1, y1, x2, y2); offset
// (R, 2, ph, pw), channel 0 is x, channel 1 is y (mmcv's order, the opposite of deform_conv2d's);
// output (R, C, ph, pw). For RoI r, with aligned, start_x = x1 * spatial_scale - 0.5 and
// roi_w = (x2 * spatial_scale - 0.5) - start_x (y alike); without, no -0.5 and roi_w >= 1. Bin (i, j)
// starts at start + (i, j) * bin, shifted by gamma * roi_size * offset, and averages
// grid_h x grid_w samples at the centres of its sub-cells, divided by max(grid_h * grid_w, 1).
//
// RoIAlign's bilinear rule (roi_align.cuh) differs from deform_conv2d's (common.cuh).
//
// Templates: S is the arrays' storage type and T = compute_t<S> the type of every coordinate,
// weight and sum (storage.cuh; float for the 16-bit types, whose gradients are scattered into T
// buffers that the launcher rounds once); I (int or long long) indexes the output and the input,
// chosen by the launcher (cudcn/backends/launch/deform_roi_pool.py). The launcher validated the
// batch indices.
#include "roi_align.cuh"

// The bin of output element (r, i, j): geometry, first corner, bin size and sample grid.
template <typename T>
struct RoiAlignBin {
  RoiAlignGeometry<T> roi;
  T y0, x0, bin_h, bin_w;
  int grid_h, grid_w;
};

template <typename S, typename T>
__device__ __forceinline__ RoiAlignBin<T> roi_align_bin(const S* rois, const S* offset, int r, int i,
                                                        int j, int pooled_h, int pooled_w,
                                                        T spatial_scale, int sampling_ratio,
                                                        T gamma, int aligned, int use_offset) {
  RoiAlignBin<T> bin;
  bin.roi = roi_align_geometry(rois + 5 * static_cast<long long>(r), spatial_scale, aligned);
  bin.bin_h = bin.roi.roi_h / static_cast<T>(pooled_h);
  bin.bin_w = bin.roi.roi_w / static_cast<T>(pooled_w);
  bin.grid_h = roi_align_grid(bin.roi.roi_h, pooled_h, sampling_ratio);
  bin.grid_w = roi_align_grid(bin.roi.roi_w, pooled_w, sampling_ratio);
  T start_y = bin.roi.start_y, start_x = bin.roi.start_x;
  if (use_offset) {
    const S* off = offset + (2 * static_cast<long long>(r) * pooled_h + i) * pooled_w + j;
    start_x += gamma * bin.roi.roi_w * widen(off[0]);
    start_y += gamma * bin.roi.roi_h * widen(off[pooled_h * pooled_w]);
  }
  bin.y0 = start_y + static_cast<T>(i) * bin.bin_h;
  bin.x0 = start_x + static_cast<T>(j) * bin.bin_w;
  return bin;
}

// Sample (iy, ix) of a bin.
template <typename T>
__device__ __forceinline__ T roi_align_sample_y(const RoiAlignBin<T>& bin, int iy) {
  return bin.y0 + (static_cast<T>(iy) + T(0.5)) * bin.bin_h / static_cast<T>(bin.grid_h);
}

template <typename T>
__device__ __forceinline__ T roi_align_sample_x(const RoiAlignBin<T>& bin, int ix) {
  return bin.x0 + (static_cast<T>(ix) + T(0.5)) * bin.bin_w / static_cast<T>(bin.grid_w);
}

// out[r, c, i, j] = mean of the bin's samples. One thread per output element; n = R * C * ph * pw.
template <typename S, typename I>
__global__ void deform_roi_pool_forward(const S* __restrict__ input, const S* __restrict__ rois,
                                        const S* __restrict__ offset, S* __restrict__ out, I n,
                                        int channels, int height, int width, int pooled_h,
                                        int pooled_w, compute_t<S> spatial_scale,
                                        int sampling_ratio, compute_t<S> gamma, int aligned,
                                        int use_offset) {
  using T = compute_t<S>;
  CUDCN_KERNEL_LOOP(index, n, I) {
    const int j = static_cast<int>(index % pooled_w);
    const int i = static_cast<int>(index / pooled_w % pooled_h);
    const int c = static_cast<int>(index / pooled_w / pooled_h % channels);
    const int r = static_cast<int>(index / pooled_w / pooled_h / channels);
    const RoiAlignBin<T> bin = roi_align_bin(rois, offset, r, i, j, pooled_h, pooled_w,
                                             spatial_scale, sampling_ratio, gamma, aligned,
                                             use_offset);
    const S* plane = input + (static_cast<I>(bin.roi.b) * channels + c) * height * width;
    T sum = T(0);
    for (int iy = 0; iy < bin.grid_h; ++iy) {
      const T y = roi_align_sample_y(bin, iy);
      for (int ix = 0; ix < bin.grid_w; ++ix) {
        const T x = roi_align_sample_x(bin, ix);
        if (!roi_align_inside(height, width, y, x)) continue;
        const RoiAlignTaps<T> t = roi_align_weights(height, width, y, x);
        const T hy = T(1) - t.ly, hx = T(1) - t.lx;
        sum += hy * hx * widen(plane[t.y_low * width + t.x_low]) +
               hy * t.lx * widen(plane[t.y_low * width + t.x_high]) +
               t.ly * hx * widen(plane[t.y_high * width + t.x_low]) +
               t.ly * t.lx * widen(plane[t.y_high * width + t.x_high]);
      }
    }
    out[index] = narrow<S>(sum / static_cast<T>(max(bin.grid_h * bin.grid_w, 1)));
  }
}

// grad_input += the bin's bilinear weights times grad_out / count (bins of one plane overlap), and,
// when use_offset, grad_offset[r, :, i, j] += the derivative of the bin along x and y (the C
// channels of one bin share it), both through a Scatter (common.cuh): atomic, or a pass of the
// deterministic fixed-point scatter (scatter_pass). The targets and the fixed buffers must be zeroed. One thread per
// grad_out element; n = R * C * ph * pw.
template <typename S, typename I>
__global__ void deform_roi_pool_backward(const S* __restrict__ grad_out, const S* __restrict__ input,
                                         const S* __restrict__ rois, const S* __restrict__ offset,
                                         compute_t<S>* __restrict__ grad_input,
                                         compute_t<S>* __restrict__ grad_offset,
                                         unsigned long long* __restrict__ fixed_input,
                                         unsigned long long* __restrict__ fixed_offset,
                                         int scatter_pass, I n, int channels,
                                         int height, int width, int pooled_h, int pooled_w,
                                         compute_t<S> spatial_scale, int sampling_ratio,
                                         compute_t<S> gamma, int aligned, int use_offset) {
  using T = compute_t<S>;
  CUDCN_KERNEL_LOOP(index, n, I) {
    const int j = static_cast<int>(index % pooled_w);
    const int i = static_cast<int>(index / pooled_w % pooled_h);
    const int c = static_cast<int>(index / pooled_w / pooled_h % channels);
    const int r = static_cast<int>(index / pooled_w / pooled_h / channels);
    const RoiAlignBin<T> bin = roi_align_bin(rois, offset, r, i, j, pooled_h, pooled_w,
                                             spatial_scale, sampling_ratio, gamma, aligned,
                                             use_offset);
    const I plane_start = (static_cast<I>(bin.roi.b) * channels + c) * height * width;
    const S* plane = input + plane_start;
    const Scatter<T> to_input{grad_input, fixed_input, scatter_pass};
    const T g = widen(grad_out[index]) / static_cast<T>(max(bin.grid_h * bin.grid_w, 1));
    T sum_x = T(0), sum_y = T(0);
    for (int iy = 0; iy < bin.grid_h; ++iy) {
      const T y = roi_align_sample_y(bin, iy);
      for (int ix = 0; ix < bin.grid_w; ++ix) {
        const T x = roi_align_sample_x(bin, ix);
        if (!roi_align_inside(height, width, y, x)) continue;
        const RoiAlignTaps<T> t = roi_align_weights(height, width, y, x);
        const T hy = T(1) - t.ly, hx = T(1) - t.lx;
        const int p1 = t.y_low * width + t.x_low, p2 = t.y_low * width + t.x_high;
        const int p3 = t.y_high * width + t.x_low, p4 = t.y_high * width + t.x_high;
        to_input.add(plane_start + p1, hy * hx * g);
        to_input.add(plane_start + p2, hy * t.lx * g);
        to_input.add(plane_start + p3, t.ly * hx * g);
        to_input.add(plane_start + p4, t.ly * t.lx * g);
        if (!use_offset) continue;
        const T v1 = widen(plane[p1]), v2 = widen(plane[p2]);
        const T v3 = widen(plane[p3]), v4 = widen(plane[p4]);
        // A sample that does not move along an axis adds 0 times its slope, and g multiplies each
        // sample's slope: 0 * inf and inf * 0 are NaN here as in the reference (IEEE), not skipped.
        sum_x += static_cast<T>(t.x_moves) * (hy * (v2 - v1) + t.ly * (v4 - v3)) * g;
        sum_y += static_cast<T>(t.y_moves) * (hx * (v3 - v1) + t.lx * (v4 - v2)) * g;
      }
    }
    if (use_offset) {
      const Scatter<T> to_offset{grad_offset, fixed_offset, scatter_pass};
      const I off = (2 * static_cast<I>(r) * pooled_h + i) * pooled_w + j;
      to_offset.add(off, gamma * bin.roi.roi_w * sum_x);
      to_offset.add(off + pooled_h * pooled_w, gamma * bin.roi.roi_h * sum_y);
    }
  }
}
