// Shared host/device helpers for the k x k window operations.
//
// Every op of this library is a sum over the taps p = i*k + j of a window centred at
// (y, x), tap p reading offset (i - r, j - r). Borders are resolved by index mapping
// (never by a padded copy of the input), and the gradients are computed in gather
// form through the preimage of that mapping, so that no kernel needs atomics.
//
// The *_element functions compute one output element from its flat index: they are the
// whole body of the CUDA kernels for untiled window sizes, as window_zero_padded_tap at the
// end is that of the kernel rewriting a gradient's kernel for zero padding
// (cuda/window_kernels.cuh); tests/csrc runs them all on the host.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FEATUP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FEATUP_HOST_DEVICE inline
#endif

namespace featup_mmseg {

enum class PaddingMode : int { Zeros = 0, Reflect = 1, Replicate = 2 };

struct WindowGeometry {
  int64_t height;
  int64_t width;
  int64_t radius;
  PaddingMode mode;

  FEATUP_HOST_DEVICE int64_t size() const { return 2 * radius + 1; }
  FEATUP_HOST_DEVICE int64_t taps() const { return size() * size(); }
  FEATUP_HOST_DEVICE int64_t plane() const { return height * width; }
};

// Source index of window position t in [-r, n - 1 + r], or -1 where zero padding
// applies. Reflection needs r < n, which the argument checks guarantee.
FEATUP_HOST_DEVICE int64_t border_index(int64_t t, int64_t n, PaddingMode mode) {
  if (t >= 0 && t < n) return t;
  switch (mode) {
    case PaddingMode::Reflect:
      return t < 0 ? -t : 2 * (n - 1) - t;
    case PaddingMode::Replicate:
      return t < 0 ? 0 : n - 1;
    default:
      return -1;
  }
}

// All window positions t in [-r, n - 1 + r] with border_index(t) == s, as at most
// three closed ranges: s itself, and what the border folds onto s from either side.
struct WindowPreimage {
  int64_t first[3];
  int64_t last[3];
  int count;
};

FEATUP_HOST_DEVICE WindowPreimage window_preimage(int64_t s, int64_t n, int64_t r,
                                                  PaddingMode mode) {
  WindowPreimage pre;
  pre.first[0] = pre.last[0] = s;
  pre.count = 1;
  if (mode == PaddingMode::Reflect) {
    if (s > 0 && s <= r) {
      pre.first[pre.count] = pre.last[pre.count] = -s;
      ++pre.count;
    }
    if (s < n - 1 && s >= n - 1 - r) {
      pre.first[pre.count] = pre.last[pre.count] = 2 * (n - 1) - s;
      ++pre.count;
    }
  } else if (mode == PaddingMode::Replicate) {
    if (s == 0 && r > 0) {
      pre.first[pre.count] = -r;
      pre.last[pre.count] = -1;
      ++pre.count;
    }
    if (s == n - 1 && r > 0) {
      pre.first[pre.count] = n;
      pre.last[pre.count] = n - 1 + r;
      ++pre.count;
    }
  }
  return pre;
}

// Whether window positions outside the map fold onto s (s has more than itself as preimage).
FEATUP_HOST_DEVICE bool window_folds_onto(int64_t s, int64_t n, int64_t r, PaddingMode mode) {
  return window_preimage(s, n, r, mode).count > 1;
}

// sum_p kernel[p, y, x] * values~[y + i - r, x + j - r]
// kernel: the k*k planes of one batch element; values: one channel plane.
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t window_aggregate_at(const scalar_t* kernel, const scalar_t* values,
                                             const WindowGeometry& g, int64_t y, int64_t x) {
  const int64_t k = g.size(), plane = g.plane(), pixel = y * g.width + x;
  acc_t sum = acc_t(0);
  for (int64_t i = 0; i < k; ++i) {
    const int64_t sy = border_index(y + i - g.radius, g.height, g.mode);
    if (sy < 0) continue;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t sx = border_index(x + j - g.radius, g.width, g.mode);
      if (sx < 0) continue;
      sum += acc_t(kernel[(i * k + j) * plane + pixel]) * acc_t(values[sy * g.width + sx]);
    }
  }
  return sum;
}

// sum_c a[c, y, x] * b~[c, y + i - r, x + j - r] for tap p = i*k + j.
// a, b: the channel planes of one batch element.
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t window_correlate_at(const scalar_t* a, const scalar_t* b,
                                             int64_t channels, const WindowGeometry& g,
                                             int64_t p, int64_t y, int64_t x) {
  const int64_t k = g.size(), plane = g.plane();
  const int64_t sy = border_index(y + p / k - g.radius, g.height, g.mode);
  const int64_t sx = border_index(x + p % k - g.radius, g.width, g.mode);
  acc_t sum = acc_t(0);
  if (sy < 0 || sx < 0) return sum;
  const int64_t pixel = y * g.width + x, source = sy * g.width + sx;
  for (int64_t c = 0; c < channels; ++c) {
    sum += acc_t(a[c * plane + pixel]) * acc_t(b[c * plane + source]);
  }
  return sum;
}

// Sum of kernel[(i, j), py, px] over the taps (i, j) of pixel (py, px) whose source, once
// borders are resolved, is (qy, qx). kernel: the k*k planes of one batch element.
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t window_landing_sum(const scalar_t* kernel, const WindowGeometry& g,
                                            int64_t py, int64_t px, int64_t qy, int64_t qx) {
  const int64_t k = g.size(), r = g.radius, plane = g.plane(), pixel = py * g.width + px;
  const WindowPreimage rows = window_preimage(qy, g.height, r, g.mode);
  const WindowPreimage cols = window_preimage(qx, g.width, r, g.mode);
  acc_t sum = acc_t(0);
  for (int rr = 0; rr < rows.count; ++rr) {
    for (int64_t t = rows.first[rr]; t <= rows.last[rr]; ++t) {
      const int64_t i = t - py + r;
      if (i < 0 || i >= k) continue;
      for (int cc = 0; cc < cols.count; ++cc) {
        for (int64_t u = cols.first[cc]; u <= cols.last[cc]; ++u) {
          const int64_t j = u - px + r;
          if (j < 0 || j >= k) continue;
          sum += acc_t(kernel[(i * k + j) * plane + pixel]);
        }
      }
    }
  }
  return sum;
}

// Adjoint of window_aggregate_at with respect to values, evaluated at (ys, xs):
// sum of kernel[p, y, x] * a[y, x] over every (p, y, x) whose tap lands on (ys, xs)
// once borders are resolved. Every such (y, x) lies in the window around (ys, xs).
// kernel: the k*k planes of one batch element; a: one plane.
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t window_aggregate_adjoint_at(const scalar_t* kernel, const scalar_t* a,
                                                     const WindowGeometry& g, int64_t ys,
                                                     int64_t xs) {
  acc_t sum = acc_t(0);
  for (int64_t y = ys - g.radius; y <= ys + g.radius; ++y) {
    if (y < 0 || y >= g.height) continue;
    for (int64_t x = xs - g.radius; x <= xs + g.radius; ++x) {
      if (x < 0 || x >= g.width) continue;
      sum += window_landing_sum<scalar_t, acc_t>(kernel, g, y, x, ys, xs) *
             acc_t(a[y * g.width + x]);
    }
  }
  return sum;
}

// Flat-index entry points: the output element `index` of each op, all tensors contiguous.

// out (B, k*k, H, W) = correlation of a (B, C, H, W) with the windows of b (B, C, H, W)
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t window_correlate_element(const scalar_t* a, const scalar_t* b,
                                                  int64_t channels, const WindowGeometry& g,
                                                  int64_t index) {
  const int64_t plane = g.plane(), taps = g.taps();
  const int64_t pixel = index % plane, p = index / plane % taps, n = index / (plane * taps);
  const int64_t offset = n * channels * plane;
  return window_correlate_at<scalar_t, acc_t>(a + offset, b + offset, channels, g, p,
                                              pixel / g.width, pixel % g.width);
}

// out (B, C, H, W) = aggregate of kernel (B, k*k, H, W) over values (B, C, H, W)
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t window_aggregate_element(const scalar_t* kernel, const scalar_t* values,
                                                  int64_t channels, const WindowGeometry& g,
                                                  int64_t index) {
  const int64_t plane = g.plane(), pixel = index % plane, channel_plane = index / plane;
  return window_aggregate_at<scalar_t, acc_t>(kernel + channel_plane / channels * g.taps() * plane,
                                              values + channel_plane * plane, g,
                                              pixel / g.width, pixel % g.width);
}

// out (B, C, H, W) = adjoint of the aggregate w.r.t. its values, applied to a (B, C, H, W)
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t window_aggregate_adjoint_element(const scalar_t* kernel,
                                                          const scalar_t* a, int64_t channels,
                                                          const WindowGeometry& g,
                                                          int64_t index) {
  const int64_t plane = g.plane(), pixel = index % plane, channel_plane = index / plane;
  return window_aggregate_adjoint_at<scalar_t, acc_t>(
      kernel + channel_plane / channels * g.taps() * plane, a + channel_plane * plane, g,
      pixel / g.width, pixel % g.width);
}

// out (B, D, H, W) = gradient of window_correlation(keys) for the logits gradient grad
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t window_correlation_backward_element(const scalar_t* grad,
                                                             const scalar_t* keys,
                                                             int64_t channels,
                                                             const WindowGeometry& g,
                                                             int64_t index) {
  return window_aggregate_element<scalar_t, acc_t>(grad, keys, channels, g, index) +
         window_aggregate_adjoint_element<scalar_t, acc_t>(grad, keys, channels, g, index);
}

// Tap (i, j) at (y, x) of the kernel that, applied with zero padding, gives what kernel
// gives with the geometry's padding (forward: window_aggregate_at) plus what its adjoint
// gives (adjoint: window_aggregate_adjoint_at); 0 for a tap reading outside the map.
// A landing sum of a single term (no border folds onto the pixel where it lands) is read
// directly. kernel: the k*k planes of one batch element.
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t window_zero_padded_tap(const scalar_t* kernel, const WindowGeometry& g,
                                                bool forward, bool adjoint, int64_t y,
                                                int64_t x, int64_t i, int64_t j) {
  const int64_t k = g.size(), r = g.radius, plane = g.plane();
  const int64_t sy = y + i - r, sx = x + j - r;
  acc_t sum = acc_t(0);
  if (sy < 0 || sy >= g.height || sx < 0 || sx >= g.width) return sum;
  if (forward) {
    sum += window_folds_onto(sy, g.height, r, g.mode) || window_folds_onto(sx, g.width, r, g.mode)
               ? window_landing_sum<scalar_t, acc_t>(kernel, g, y, x, sy, sx)
               : acc_t(kernel[(i * k + j) * plane + y * g.width + x]);
  }
  if (adjoint) {
    sum += window_folds_onto(y, g.height, r, g.mode) || window_folds_onto(x, g.width, r, g.mode)
               ? window_landing_sum<scalar_t, acc_t>(kernel, g, sy, sx, y, x)
               : acc_t(kernel[((k - 1 - i) * k + k - 1 - j) * plane + sy * g.width + sx]);
  }
  return sum;
}

}  // namespace featup_mmseg
