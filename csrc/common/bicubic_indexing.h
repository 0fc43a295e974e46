// Shared host/device helpers of the bicubic resize (PyTorch's upsample_bicubic2d with
// align_corners=False) and of its adjoint.
//
// Along an axis resized from `in` to `out` samples, output o reads the input at
// src = (o + 0.5) * in / out - 0.5 through the four taps floor(src) - 1 + t (t < 4),
// clamped to the axis, with the cubic convolution weights (A = -0.75) of src's fraction.
// A 2-D resize is that along the rows times that along the columns. The adjoint gathers:
// input i receives from the outputs whose taps land on it, a contiguous range (src grows
// with o), found by bicubic_readers; border clamping adds the outputs reading beyond
// either end to the first and last input.
//
// The *_element functions compute one output element from its flat index: the whole body
// of the CUDA kernels (cuda/bicubic_kernels.cuh); tests/csrc runs them on the host.
#pragma once

#include <cstdint>

#include "window_indexing.h"  // FEATUP_HOST_DEVICE

namespace featup_mmseg {

struct ResizeGeometry {
  int64_t in_height;
  int64_t in_width;
  int64_t out_height;
  int64_t out_width;
};

// The cubic convolution kernel (A = -0.75) at a distance d <= 1 (the inner taps) and at
// 1 < d < 2 (the outer taps).
template <typename acc_t>
FEATUP_HOST_DEVICE acc_t cubic_inner(acc_t d) {
  const acc_t A = acc_t(-0.75);
  return ((A + 2) * d - (A + 3)) * d * d + 1;
}
template <typename acc_t>
FEATUP_HOST_DEVICE acc_t cubic_outer(acc_t d) {
  const acc_t A = acc_t(-0.75);
  return ((A * d - 5 * A) * d + 8 * A) * d - 4 * A;
}

// The four inputs of output o and their weights, along an axis from in to out samples.
template <typename acc_t>
FEATUP_HOST_DEVICE void bicubic_taps(int64_t o, int64_t in, int64_t out, int64_t* index,
                                     acc_t* weight) {
  const acc_t scale = acc_t(in) / acc_t(out);
  const acc_t src = scale * (acc_t(o) + acc_t(0.5)) - acc_t(0.5);
  // src >= -0.5 for every o >= 0, so floor is the truncation but for (-0.5, 0)
  const int64_t first = src < acc_t(0) ? -1 : int64_t(src);
  const acc_t t = src - acc_t(first);
  weight[0] = cubic_outer<acc_t>(t + 1);
  weight[1] = cubic_inner<acc_t>(t);
  weight[2] = cubic_inner<acc_t>(1 - t);
  weight[3] = cubic_outer<acc_t>(2 - t);
  for (int tap = 0; tap < 4; ++tap) {
    const int64_t i = first - 1 + tap;
    index[tap] = i < 0 ? 0 : (i >= in ? in - 1 : i);
  }
}

// The weight with which output o reads input i (0 if it does not).
template <typename acc_t>
FEATUP_HOST_DEVICE acc_t bicubic_weight(int64_t o, int64_t i, int64_t in, int64_t out) {
  int64_t index[4];
  acc_t weight[4];
  bicubic_taps<acc_t>(o, in, out, index, weight);
  acc_t sum = acc_t(0);
  for (int tap = 0; tap < 4; ++tap) {
    if (index[tap] == i) sum += weight[tap];
  }
  return sum;
}

// [*first, *last]: every output o that may read input i (a superset; bicubic_weight tells).
// Unclamped, o reads i when floor(src_o) is in [i - 2, i + 1], i.e. src_o in [i - 2, i + 2):
// o in [(i - 1.5) * out / in - 0.5, (i + 2.5) * out / in - 0.5), widened by one against
// round-off. The first and last inputs also receive the clamped taps of the outermost outputs.
FEATUP_HOST_DEVICE void bicubic_readers(int64_t i, int64_t in, int64_t out, int64_t* first,
                                        int64_t* last) {
  const double ratio = double(out) / double(in);
  const int64_t lo = i == 0 ? 0 : int64_t((double(i) - 1.5) * ratio - 0.5) - 1;
  const int64_t hi = i == in - 1 ? out - 1 : int64_t((double(i) + 2.5) * ratio - 0.5) + 1;
  *first = lo < 0 ? 0 : lo;
  *last = hi >= out ? out - 1 : hi;
}

// out (B, C, H, W) = the resize of x (B, C, h, w)
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t bicubic_resize_element(const scalar_t* x, const ResizeGeometry& g,
                                                int64_t index) {
  const int64_t ox = index % g.out_width, oy = index / g.out_width % g.out_height;
  const int64_t plane = index / (g.out_width * g.out_height);
  const scalar_t* source = x + plane * g.in_height * g.in_width;
  int64_t rows[4], columns[4];
  acc_t row_weights[4], column_weights[4];
  bicubic_taps<acc_t>(oy, g.in_height, g.out_height, rows, row_weights);
  bicubic_taps<acc_t>(ox, g.in_width, g.out_width, columns, column_weights);
  acc_t sum = acc_t(0);
  for (int a = 0; a < 4; ++a) {
    acc_t row_sum = acc_t(0);
    for (int b = 0; b < 4; ++b) {
      row_sum += column_weights[b] * acc_t(source[rows[a] * g.in_width + columns[b]]);
    }
    sum += row_weights[a] * row_sum;
  }
  return sum;
}

// out (B, C, h, w) = the adjoint of the resize applied to grad (B, C, H, W)
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t bicubic_resize_adjoint_element(const scalar_t* grad,
                                                        const ResizeGeometry& g,
                                                        int64_t index) {
  const int64_t ix = index % g.in_width, iy = index / g.in_width % g.in_height;
  const int64_t plane = index / (g.in_width * g.in_height);
  const scalar_t* source = grad + plane * g.out_height * g.out_width;
  int64_t oy_first, oy_last, ox_first, ox_last;
  bicubic_readers(iy, g.in_height, g.out_height, &oy_first, &oy_last);
  bicubic_readers(ix, g.in_width, g.out_width, &ox_first, &ox_last);
  acc_t sum = acc_t(0);
  for (int64_t oy = oy_first; oy <= oy_last; ++oy) {
    const acc_t row_weight = bicubic_weight<acc_t>(oy, iy, g.in_height, g.out_height);
    if (row_weight == acc_t(0)) continue;
    acc_t row_sum = acc_t(0);
    for (int64_t ox = ox_first; ox <= ox_last; ++ox) {
      row_sum += bicubic_weight<acc_t>(ox, ix, g.in_width, g.out_width) *
                 acc_t(source[oy * g.out_width + ox]);
    }
    sum += row_weight * row_sum;
  }
  return sum;
}

}  // namespace featup_mmseg
