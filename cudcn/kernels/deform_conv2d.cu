// deform_conv2d kernels: deformable im2col (forward), its transpose onto the input (input
// gradient), and the offset / mask gradient. The GEMMs with the weight run in cuBLAS
// (cudcn/backends/launch/deform_conv2d.py); these kernels move samples between the images and the
// column buffer.
//
// Notation (docs/spec.md): input (B, C, H, W); offset (B, 2 * og * kh * kw, Ho, Wo); mask
// (B, og * kh * kw, Ho, Wo). Offset group g, tap k = i * kw + j: offset channel
// 2 * (g * kh * kw + k) is dy (rows), the next one dx (columns); mask channel g * kh * kw + k.
// Channel c belongs to offset group c / (C / og). Sampling point of output (oy, ox), tap (i, j):
//     y = oy * stride_h - pad_h + i * dilation_h + dy
//     x = ox * stride_w - pad_w + j * dilation_w + dx
//
// A launch covers a chunk of `batch` images (the launcher's batch chunk). The column buffer has
// shape (C * kh * kw, batch, Ho * Wo), row c * kh * kw + k: the rows of one weight group are
// contiguous, so a group's GEMM reads one block of rows.
//
// Templates: S is the storage type of the arrays (float, double, cudcn_half, cudcn_bfloat16) and
// T = compute_t<S> the type of every coordinate, weight and sum (float for the 16-bit types,
// storage.cuh); the column buffer and the input gradient's scatter target hold T, so the GEMMs and
// the scatter run in T and the launcher rounds their results once. I (int or long long) is the
// index type, chosen by the launcher from the largest element count of the launch, so large
// problems index in 64 bits and the rest keep cheap 32-bit division. One (H, W) or (Ho, Wo)
// plane is indexed in int.
#include "common.cuh"

// The sampling coordinate of output position o, kernel tap t, displaced by d, along one axis.
template <typename T>
__device__ __forceinline__ T tap_position(int o, int stride, int pad, int t, int dilation, T d) {
  return static_cast<T>(o * stride - pad + t * dilation) + d;
}

// columns[c * kh * kw + k, b, p] = mask * bilinear_sample(input[b, c], y, x), p = oy * Wo + ox.
// One thread per (c, b, p); n = C * batch * Ho * Wo.
template <typename S, typename I>
__global__ void deform_conv2d_im2col(const S* __restrict__ input, const S* __restrict__ offset,
                                     const S* __restrict__ mask, compute_t<S>* __restrict__ columns,
                                     I n,
                                     int batch, int channels, int height, int width, int out_h,
                                     int out_w, int kernel_h, int kernel_w, int stride_h,
                                     int stride_w, int pad_h, int pad_w, int dilation_h,
                                     int dilation_w, int offset_groups, int use_mask) {
  using T = compute_t<S>;
  const int out_plane = out_h * out_w;
  const int taps = kernel_h * kernel_w;
  CUDCN_KERNEL_LOOP(index, n, I) {
    const int p = static_cast<int>(index % out_plane);
    const int b = static_cast<int>(index / out_plane % batch);
    const int c = static_cast<int>(index / out_plane / batch);
    const int oy = p / out_w;
    const int ox = p % out_w;
    const int g = c / (channels / offset_groups);

    const S* plane = input + (static_cast<I>(b) * channels + c) * height * width;
    const S* offset_bg = offset + static_cast<I>(b * offset_groups + g) * 2 * taps * out_plane;
    const I mask_base = static_cast<I>(b * offset_groups + g) * taps * out_plane;  // if use_mask
    T* column = columns + (static_cast<I>(c) * taps * batch + b) * out_plane + p;
    for (int i = 0; i < kernel_h; ++i) {
      for (int j = 0; j < kernel_w; ++j) {
        const int k = i * kernel_w + j;
        const T dy = widen(offset_bg[static_cast<I>(2 * k) * out_plane + p]);
        const T dx = widen(offset_bg[static_cast<I>(2 * k + 1) * out_plane + p]);
        const T y = tap_position(oy, stride_h, pad_h, i, dilation_h, dy);
        const T x = tap_position(ox, stride_w, pad_w, j, dilation_w, dx);
        T value = bilinear_sample(plane, height, width, y, x);
        if (use_mask) value *= widen(mask[mask_base + static_cast<I>(k) * out_plane + p]);
        column[static_cast<I>(k) * batch * out_plane] = value;
      }
    }
  }
}

// grad_input[b, c] += bilinear_scatter of mask * columns[c * kh * kw + k, b, p] for every tap k,
// where columns holds the gradient of the column buffer. grad_input (and fixed_input) must be
// zeroed; the Scatter (common.cuh) resolves the collisions of neighbouring sampling points, atomic
// or, in the deterministic mode's two passes (scatter_pass), in fixed point. One thread per
// (c, b, p); n = C * batch * Ho * Wo.
template <typename S, typename I>
__global__ void deform_conv2d_col2im(const compute_t<S>* __restrict__ columns,
                                     const S* __restrict__ offset, const S* __restrict__ mask,
                                     compute_t<S>* __restrict__ grad_input,
                                     unsigned long long* __restrict__ fixed_input,
                                     int scatter_pass, I n,
                                     int batch, int channels, int height, int width, int out_h,
                                     int out_w, int kernel_h, int kernel_w, int stride_h,
                                     int stride_w, int pad_h, int pad_w, int dilation_h,
                                     int dilation_w, int offset_groups, int use_mask) {
  using T = compute_t<S>;
  const int out_plane = out_h * out_w;
  const int taps = kernel_h * kernel_w;
  CUDCN_KERNEL_LOOP(index, n, I) {
    const int p = static_cast<int>(index % out_plane);
    const int b = static_cast<int>(index / out_plane % batch);
    const int c = static_cast<int>(index / out_plane / batch);
    const int oy = p / out_w;
    const int ox = p % out_w;
    const int g = c / (channels / offset_groups);

    const Scatter<T> scatter{grad_input, fixed_input, scatter_pass};
    const I plane = (static_cast<I>(b) * channels + c) * height * width;
    const S* offset_bg = offset + static_cast<I>(b * offset_groups + g) * 2 * taps * out_plane;
    const I mask_base = static_cast<I>(b * offset_groups + g) * taps * out_plane;  // if use_mask
    const T* column = columns + (static_cast<I>(c) * taps * batch + b) * out_plane + p;
    for (int i = 0; i < kernel_h; ++i) {
      for (int j = 0; j < kernel_w; ++j) {
        const int k = i * kernel_w + j;
        const T dy = widen(offset_bg[static_cast<I>(2 * k) * out_plane + p]);
        const T dx = widen(offset_bg[static_cast<I>(2 * k + 1) * out_plane + p]);
        const T y = tap_position(oy, stride_h, pad_h, i, dilation_h, dy);
        const T x = tap_position(ox, stride_w, pad_w, j, dilation_w, dx);
        T value = column[static_cast<I>(k) * batch * out_plane];
        if (use_mask) value *= widen(mask[mask_base + static_cast<I>(k) * out_plane + p]);
        bilinear_scatter(scatter, plane, height, width, y, x, value);
      }
    }
  }
}

// Offset and mask gradients: for sampling point (b, g, k, p) a reduction over the C / og channels
// of offset group g, no atomics (each thread owns its outputs):
//     grad_offset[dy] = mask * sum_c columns[c, k, b, p] * d bilinear / dy,   (dx alike)
//     grad_mask       =        sum_c columns[c, k, b, p] * bilinear.
// columns holds the gradient of the column buffer. grad_mask is written only when use_mask.
// One thread per (b, g, k, p); n = batch * og * kh * kw * Ho * Wo.
template <typename S, typename I>
__global__ void deform_conv2d_col2im_coord(const compute_t<S>* __restrict__ columns,
                                           const S* __restrict__ input,
                                           const S* __restrict__ offset,
                                           const S* __restrict__ mask, S* __restrict__ grad_offset,
                                           S* __restrict__ grad_mask, I n, int batch, int channels,
                                           int height, int width, int out_h, int out_w,
                                           int kernel_h, int kernel_w, int stride_h, int stride_w,
                                           int pad_h, int pad_w, int dilation_h, int dilation_w,
                                           int offset_groups, int use_mask) {
  using T = compute_t<S>;
  const int out_plane = out_h * out_w;
  const int taps = kernel_h * kernel_w;
  const int group_channels = channels / offset_groups;
  CUDCN_KERNEL_LOOP(index, n, I) {
    const int p = static_cast<int>(index % out_plane);
    const int k = static_cast<int>(index / out_plane % taps);
    const int g = static_cast<int>(index / out_plane / taps % offset_groups);
    const int b = static_cast<int>(index / out_plane / taps / offset_groups);
    const int oy = p / out_w;
    const int ox = p % out_w;
    const int i = k / kernel_w;
    const int j = k % kernel_w;

    const I offset_bg = static_cast<I>(b * offset_groups + g) * 2 * taps * out_plane;
    const I dy_index = offset_bg + static_cast<I>(2 * k) * out_plane + p;
    const I dx_index = dy_index + out_plane;
    const I mask_index = (static_cast<I>(b * offset_groups + g) * taps + k) * out_plane + p;
    const T y = tap_position(oy, stride_h, pad_h, i, dilation_h, widen(offset[dy_index]));
    const T x = tap_position(ox, stride_w, pad_w, j, dilation_w, widen(offset[dx_index]));

    T sum_y = T(0), sum_x = T(0), sum_value = T(0);
    for (int c = g * group_channels; c < (g + 1) * group_channels; ++c) {
      const S* plane = input + (static_cast<I>(b) * channels + c) * height * width;
      const T grad = columns[((static_cast<I>(c) * taps + k) * batch + b) * out_plane + p];
      T value, grad_y, grad_x;
      bilinear_sample_grad(plane, height, width, y, x, value, grad_y, grad_x);
      sum_y += grad * grad_y;
      sum_x += grad * grad_x;
      sum_value += grad * value;
    }
    const T m = use_mask ? widen(mask[mask_index]) : T(1);
    grad_offset[dy_index] = narrow<S>(m * sum_y);
    grad_offset[dx_index] = narrow<S>(m * sum_x);
    if (use_mask) grad_mask[mask_index] = narrow<S>(sum_value);
  }
}
