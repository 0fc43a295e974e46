// CPU launchers of the fused JBU range kernel.
//
// The window dot products come from the correlation's vectorised launcher
// (window_ops_cpu.cpp), written into the output itself; one pass over the rows (b, y),
// split with at::parallel_for, then turns each row's taps into its normalised kernel in
// place, the row's pixels the inner, vectorised loop (the math of
// common/range_kernel_math.h's per-pixel functions, laid out a row at a time). The
// backward recomputes the dot products, turns them in place into their gradients in the
// same way, and hands those to the correlation's backward launcher, which gathers both the
// centre's and the neighbours' share of the keys' gradient. The parameters' gradients are
// summed per row, then over the rows in a fixed order: the same bits whatever the number
// of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../range_kernel.h"
#include "simd_clones.h"

namespace featup_mmseg {
namespace {

// Rows of a parallel task: at least about 2^15 multiply-adds each.
int64_t grain(int64_t row_cost) {
  constexpr int64_t kMinTaskCost = int64_t(1) << 15;
  return std::max<int64_t>(1, kMinTaskCost / std::max<int64_t>(row_cost, 1));
}

// The inputs both passes read.
template <typename scalar_t>
struct RangeArgs {
  const scalar_t* norms;  // |Q|^2 (B, 1, H, W), 'gaussian_euclidean' only
  const scalar_t* spatial;
  scalar_t scale;
  RangeVariant variant;
  WindowGeometry g;
};

// exp(x) up to x = 709 (float: 88), branch-free so that loops over it
// vectorise in each SIMD clone: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, a Taylor
// polynomial of exp(r) to the type's precision, and 2^n built in the exponent bits (n read
// from the low bits of x log2(e) + 1.5 2^m, which rounds it to an integer). Within 2 ulp of
// std::exp; 0 below the smallest normal result, as std::exp all but rounds to there.
FEATUP_INLINE double vector_exp(double x) {
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52
  const double clamped = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double t = clamped * 1.4426950408889634 + kShift;
  const double n = t - kShift;
  const double r = (clamped - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double poly = 1.0 / 6227020800.0;  // 1 / 13!
  constexpr double kInverseFactorials[13] = {
      1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
      1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
  for (double c : kInverseFactorials) poly = poly * r + c;
  const uint64_t exponent =
      (__builtin_bit_cast(uint64_t, t) - __builtin_bit_cast(uint64_t, kShift) + uint64_t(1023))
      << 52;
  const double result = poly * __builtin_bit_cast(double, exponent);
  return x < -708.0 ? 0.0 : result;
}

FEATUP_INLINE float vector_exp(float x) {
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23
  const float clamped = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = clamped * 1.44269504f + kShift;
  const float n = t - kShift;
  const float r = (clamped - n * 0.693359375f) - n * -2.12194440e-4f;
  float poly = 1.0f / 5040.0f;  // 1 / 7!
  constexpr float kInverseFactorials[7] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f,
                                           1.0f / 6.0f,   0.5f,          1.0f, 1.0f};
  for (float c : kInverseFactorials) poly = poly * r + c;
  const uint32_t exponent =
      (__builtin_bit_cast(uint32_t, t) - __builtin_bit_cast(uint32_t, kShift) + uint32_t(127))
      << 23;
  const float result = poly * __builtin_bit_cast(float, exponent);
  return x < -87.0f ? 0.0f : result;
}

// The k*k planes of a (B, k*k, H, W) map are H*W elements apart, which at power-of-two
// sizes maps a pixel's taps onto the same L1 sets: each output row first loads its k*k
// rows into contiguous scratch (rows[p * W + x]), and stores them back once written. The
// row's pixels are then the inner, vectorised loop of every step, each pixel's sums over
// the taps accumulated in its own lane (no reassociation).
template <typename scalar_t>
FEATUP_INLINE void load_tap_rows(scalar_t* rows, const scalar_t* map, const WindowGeometry& g,
                                 int64_t n, int64_t y) {
  const scalar_t* first = map + n * g.taps() * g.plane() + y * g.width;
  for (int64_t p = 0; p < g.taps(); ++p) {
    std::copy(first + p * g.plane(), first + p * g.plane() + g.width, rows + p * g.width);
  }
}

template <typename scalar_t>
FEATUP_INLINE void store_tap_rows(scalar_t* map, const scalar_t* rows, const WindowGeometry& g,
                                  int64_t n, int64_t y) {
  scalar_t* first = map + n * g.taps() * g.plane() + y * g.width;
  for (int64_t p = 0; p < g.taps(); ++p) {
    std::copy(rows + p * g.width, rows + (p + 1) * g.width, first + p * g.plane());
  }
}

// Scratch of one task: a row's k*k tap rows several times over and per-pixel sums.
template <typename scalar_t>
struct RowScratch {
  std::vector<scalar_t> dots, grad, range, window_norms, distance_grad;
  std::vector<scalar_t> first, second, centre_norms, centre_share;
  std::vector<int64_t> columns;  // columns[j * W + x]: the source column of tap column j

  RowScratch(const WindowGeometry& g, bool backward, bool euclidean)
      : dots(g.taps() * g.width),
        grad(backward ? g.taps() * g.width : 0),
        range(backward ? g.taps() * g.width : 0),
        window_norms(euclidean ? g.taps() * g.width : 0),
        distance_grad(backward && euclidean ? g.taps() * g.width : 0),
        first(g.width),
        second(g.width),
        centre_norms(euclidean ? g.width : 0),
        centre_share(backward && euclidean ? g.width : 0),
        columns(g.size() * g.width) {
    for (int64_t j = 0; j < g.size(); ++j) {
      for (int64_t x = 0; x < g.width; ++x) {
        columns[j * g.width + x] = border_index(x + j - g.radius, g.width, g.mode);
      }
    }
  }

  // 'gaussian_euclidean': |Q|^2 of row y's pixels and of their taps (0 where zero padding
  // applies).
  void gather_norms(const RangeArgs<scalar_t>& args, int64_t n, int64_t y) {
    const WindowGeometry& g = args.g;
    const scalar_t* norms = args.norms + n * g.plane();
    std::copy(norms + y * g.width, norms + (y + 1) * g.width, centre_norms.begin());
    for (int64_t p = 0; p < g.taps(); ++p) {
      const int64_t sy = border_index(y + p / g.size() - g.radius, g.height, g.mode);
      const int64_t* column = columns.data() + (p % g.size()) * g.width;
      scalar_t* out = window_norms.data() + p * g.width;
      for (int64_t x = 0; x < g.width; ++x) {
        out[x] = sy < 0 || column[x] < 0 ? scalar_t(0) : norms[sy * g.width + column[x]];
      }
    }
  }
};

// range[p * W + x] = R_p of each pixel of a row from its dots (they may alias); for the
// softmax, first holds each pixel's max logit on return.
template <typename scalar_t>
FEATUP_INLINE void range_rows(scalar_t* range, const scalar_t* dots, RowScratch<scalar_t>& s,
                              const RangeArgs<scalar_t>& args) {
  const int64_t taps = args.g.taps(), width = args.g.width;
  const scalar_t scale = args.scale;
  scalar_t* top = s.first.data();
  scalar_t* total = s.second.data();
  if (args.variant == RangeVariant::Softmax) {  // as F.softmax: exp(a - max a) / sum
    for (int64_t x = 0; x < width; ++x) top[x] = scale * dots[x];
    for (int64_t p = 1; p < taps; ++p) {
      for (int64_t x = 0; x < width; ++x) {
        const scalar_t v = scale * dots[p * width + x];
        top[x] = v > top[x] ? v : top[x];
      }
    }
    std::fill(total, total + width, scalar_t(0));
    for (int64_t p = 0; p < taps; ++p) {
      for (int64_t x = 0; x < width; ++x) {
        const scalar_t e = vector_exp(scale * dots[p * width + x] - top[x]);
        range[p * width + x] = e;
        total[x] += e;
      }
    }
    for (int64_t p = 0; p < taps; ++p) {
      for (int64_t x = 0; x < width; ++x) range[p * width + x] /= total[x];
    }
    return;
  }
  const bool cosine = args.variant == RangeVariant::GaussianCosine;
  for (int64_t p = 0; p < taps; ++p) {
    const scalar_t* window = cosine ? nullptr : s.window_norms.data() + p * width;
    for (int64_t x = 0; x < width; ++x) {
      // the distance as the unfused composition computes it, clamped at 0 alike
      scalar_t distance = scalar_t(1) - dots[p * width + x];
      if (!cosine) {
        distance = s.centre_norms[x] + window[x] - scalar_t(2) * dots[p * width + x];
        distance = distance < scalar_t(0) ? scalar_t(0) : distance;
      }
      range[p * width + x] = vector_exp(-scale * distance);
    }
  }
}

// dots (B, k*k, H, W) -> K in place, rows [begin, end) of B * H.
template <typename scalar_t>
FEATUP_INLINE void forward_rows_impl(scalar_t* dots, const RangeArgs<scalar_t>& args,
                                     int64_t begin, int64_t end) {
  const WindowGeometry& g = args.g;
  const int64_t taps = g.taps(), width = g.width;
  const bool euclidean = args.variant == RangeVariant::GaussianEuclidean;
  RowScratch<scalar_t> s(g, false, euclidean);
  scalar_t* rows = s.dots.data();
  scalar_t* total = s.second.data();
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, y = index % g.height;
    load_tap_rows(rows, dots, g, n, y);
    if (euclidean) s.gather_norms(args, n, y);
    range_rows(rows, rows, s, args);
    std::fill(total, total + width, scalar_t(0));
    for (int64_t p = 0; p < taps; ++p) {
      const scalar_t spatial = args.spatial[p];
      for (int64_t x = 0; x < width; ++x) {
        rows[p * width + x] *= spatial;
        total[x] += rows[p * width + x];
      }
    }
    for (int64_t x = 0; x < width; ++x) {
      total[x] = total[x] > scalar_t(kTapSumFloor) ? total[x] : scalar_t(kTapSumFloor);
    }
    for (int64_t p = 0; p < taps; ++p) {
      for (int64_t x = 0; x < width; ++x) rows[p * width + x] /= total[x];
    }
    store_tap_rows(dots, rows, g, n, y);
  }
}

// sum_x v[x] in a fixed order: 8 lanes, then the lanes (vectorised, deterministic).
template <typename scalar_t>
FEATUP_INLINE scalar_t lane_sum(const scalar_t* v, int64_t width) {
  constexpr int64_t kLanes = 8;
  scalar_t lanes[kLanes] = {};
  int64_t x = 0;
  for (; x + kLanes <= width; x += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += v[x + l];
  }
  scalar_t total = scalar_t(0);
  for (; x < width; ++x) total += v[x];
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// The outputs of the backward rows (see backward_rows_impl).
template <typename scalar_t>
struct BackwardOut {
  scalar_t* dots;           // dots in, their gradients out (B, k*k, H, W)
  const scalar_t* grad;     // the gradient of K (B, k*k, H, W)
  scalar_t* distance_grad;  // 'gaussian_euclidean': each tap's distance gradient, else null
  scalar_t* norm_grad;      // 'gaussian_euclidean': the centre norm's share (B, 1, H, W)
  scalar_t* partials;       // per row: (scale's share, spatial's k*k shares)
};

// dots -> their gradients in place for the gradient of K, rows [begin, end) of B * H.
template <typename scalar_t>
FEATUP_INLINE void backward_rows_impl(const BackwardOut<scalar_t>& o,
                                      const RangeArgs<scalar_t>& args, int64_t begin,
                                      int64_t end) {
  const WindowGeometry& g = args.g;
  const int64_t taps = g.taps(), width = g.width, plane = g.plane();
  const scalar_t scale = args.scale;
  const bool euclidean = args.variant == RangeVariant::GaussianEuclidean;
  RowScratch<scalar_t> s(g, true, euclidean);
  scalar_t *dots = s.dots.data(), *grad = s.grad.data(), *range = s.range.data();
  scalar_t *norm = s.first.data(), *grad_dot_kernel = s.second.data();
  std::vector<scalar_t> product_sum(width), range_dot_grad(width), terms(width);
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, y = index % g.height;
    scalar_t* row_partials = o.partials + index * (1 + taps);
    load_tap_rows(dots, o.dots, g, n, y);
    load_tap_rows(grad, o.grad, g, n, y);
    if (euclidean) s.gather_norms(args, n, y);
    range_rows(range, dots, s, args);
    // K = P / max(sum P, floor), P = R S: dK_p/dP_q = (delta_pq - [sum P >= floor] K_p) / max
    std::fill(product_sum.begin(), product_sum.end(), scalar_t(0));
    std::fill(grad_dot_kernel, grad_dot_kernel + width, scalar_t(0));
    for (int64_t p = 0; p < taps; ++p) {
      const scalar_t spatial = args.spatial[p];
      for (int64_t x = 0; x < width; ++x) {
        const scalar_t product = range[p * width + x] * spatial;
        product_sum[x] += product;
        grad_dot_kernel[x] += grad[p * width + x] * product;
      }
    }
    for (int64_t x = 0; x < width; ++x) {
      const scalar_t total = product_sum[x];
      norm[x] = total > scalar_t(kTapSumFloor) ? total : scalar_t(kTapSumFloor);
      grad_dot_kernel[x] = total >= scalar_t(kTapSumFloor) ? grad_dot_kernel[x] / norm[x]
                                                           : scalar_t(0);
    }
    // grad becomes the gradient of R_p; spatial's shares summed over the row
    std::fill(range_dot_grad.begin(), range_dot_grad.end(), scalar_t(0));
    for (int64_t p = 0; p < taps; ++p) {
      const scalar_t spatial = args.spatial[p];
      scalar_t* g_row = grad + p * width;
      const scalar_t* r_row = range + p * width;
      for (int64_t x = 0; x < width; ++x) {
        const scalar_t product_grad = (g_row[x] - grad_dot_kernel[x]) / norm[x];
        terms[x] = product_grad * r_row[x];
        g_row[x] = product_grad * spatial;
        range_dot_grad[x] += g_row[x] * r_row[x];
      }
      row_partials[1 + p] = lane_sum(terms.data(), width);
    }
    std::fill(terms.begin(), terms.end(), scalar_t(0));  // the scale's shares
    if (args.variant == RangeVariant::Softmax) {
      // R = softmax(a), a = scale * dots: da_p = R_p (dR_p - sum_q dR_q R_q)
      for (int64_t p = 0; p < taps; ++p) {
        for (int64_t x = 0; x < width; ++x) {
          const int64_t at = p * width + x;
          const scalar_t logit_grad = range[at] * (grad[at] - range_dot_grad[x]);
          terms[x] += logit_grad * dots[at];
          dots[at] = scale * logit_grad;
        }
      }
    } else {
      const bool cosine = args.variant == RangeVariant::GaussianCosine;
      scalar_t* share = euclidean ? s.centre_share.data() : nullptr;
      if (euclidean) std::fill(share, share + width, scalar_t(0));
      for (int64_t p = 0; p < taps; ++p) {
        const scalar_t* window = cosine ? nullptr : s.window_norms.data() + p * width;
        scalar_t* distance_row = euclidean ? s.distance_grad.data() + p * width : nullptr;
        for (int64_t x = 0; x < width; ++x) {
          const int64_t at = p * width + x;
          // R = exp(-scale * d): dR/dd = -scale R, dR/dscale = -d R
          scalar_t distance = scalar_t(1) - dots[at];
          bool through = true;
          if (!cosine) {
            distance = s.centre_norms[x] + window[x] - scalar_t(2) * dots[at];
            through = distance >= scalar_t(0);
            distance = through ? distance : scalar_t(0);
          }
          const scalar_t weighted = grad[at] * range[at];
          terms[x] -= distance * weighted;
          const scalar_t distance_gradient = through ? -scale * weighted : scalar_t(0);
          if (cosine) {  // d = 1 - dot
            dots[at] = -distance_gradient;
          } else {  // d = |Q_c|^2 + |Q~_p|^2 - 2 dot
            dots[at] = scalar_t(-2) * distance_gradient;
            distance_row[x] = distance_gradient;
            share[x] += distance_gradient;
          }
        }
      }
      if (euclidean) {
        std::copy(share, share + width, o.norm_grad + n * plane + y * width);
        store_tap_rows(o.distance_grad, s.distance_grad.data(), g, n, y);
      }
    }
    row_partials[0] = lane_sum(terms.data(), width);
    store_tap_rows(o.dots, dots, g, n, y);
  }
}

// The SIMD clones of the row loops, per dtype.
FEATUP_SIMD_CLONES void forward_rows(float* dots, const RangeArgs<float>& args, int64_t begin,
                                     int64_t end) {
  forward_rows_impl(dots, args, begin, end);
}
FEATUP_SIMD_CLONES void forward_rows(double* dots, const RangeArgs<double>& args, int64_t begin,
                                     int64_t end) {
  forward_rows_impl(dots, args, begin, end);
}
FEATUP_SIMD_CLONES void backward_rows(const BackwardOut<float>& o, const RangeArgs<float>& args,
                                      int64_t begin, int64_t end) {
  backward_rows_impl(o, args, begin, end);
}
FEATUP_SIMD_CLONES void backward_rows(const BackwardOut<double>& o,
                                      const RangeArgs<double>& args, int64_t begin,
                                      int64_t end) {
  backward_rows_impl(o, args, begin, end);
}

// grad_keys += 2 Q * (the gradient of |Q|^2: norm_gradient_share of the centre share
// norm_grad), rows [begin, end) of B * H.
template <typename scalar_t>
void add_norm_gradient_rows(scalar_t* grad_keys, const scalar_t* keys,
                            const scalar_t* distance_grad, const scalar_t* norm_grad,
                            int64_t channels, const WindowGeometry& g, int64_t begin,
                            int64_t end) {
  const int64_t plane = g.plane();
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, ys = index % g.height;
    const scalar_t* taps = distance_grad + n * g.taps() * plane;
    for (int64_t xs = 0; xs < g.width; ++xs) {
      const scalar_t share =
          norm_gradient_share(taps, norm_grad[n * plane + ys * g.width + xs], g, ys, xs);
      const int64_t at = n * channels * plane + ys * g.width + xs;
      for (int64_t c = 0; c < channels; ++c) {
        grad_keys[at + c * plane] += scalar_t(2) * keys[at + c * plane] * share;
      }
    }
  }
}

// The scale and the spatial kernel from the parameters (CPU tensors: read directly).
template <typename scalar_t>
RangeArgs<scalar_t> range_args(const at::Tensor& norms, const at::Tensor& range_param,
                               const at::Tensor& sigma_spatial, RangeVariant variant,
                               const WindowGeometry& g, std::vector<scalar_t>& spatial) {
  const scalar_t sigma = *sigma_spatial.const_data_ptr<scalar_t>();
  spatial.resize(g.taps());
  for (int64_t p = 0; p < g.taps(); ++p) spatial[p] = spatial_tap(p, g.size(), sigma);
  return {norms.defined() ? norms.const_data_ptr<scalar_t>() : nullptr, spatial.data(),
          range_scale(variant, *range_param.const_data_ptr<scalar_t>()), variant, g};
}

}  // namespace

void normalized_range_kernel_cpu(const at::Tensor& keys, const at::Tensor& range_param,
                                 const at::Tensor& sigma_spatial, RangeVariant variant,
                                 at::Tensor& out, const WindowGeometry& g) {
  window_dots(keys, out, g, &window_correlate_cpu);
  const at::Tensor norms = squared_norms(keys, variant);
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "normalized_range_kernel_cpu", [&] {
    std::vector<scalar_t> spatial;
    const RangeArgs<scalar_t> args =
        range_args<scalar_t>(norms, range_param, sigma_spatial, variant, g, spatial);
    scalar_t* dots = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, keys.size(0) * g.height, grain(8 * g.taps() * g.width),
                     [&](int64_t begin, int64_t end) { forward_rows(dots, args, begin, end); });
  });
}

void normalized_range_kernel_backward_cpu(const at::Tensor& grad, const at::Tensor& keys,
                                          const at::Tensor& range_param,
                                          const at::Tensor& sigma_spatial, RangeVariant variant,
                                          at::Tensor& grad_keys, at::Tensor& grad_range_param,
                                          at::Tensor& grad_sigma_spatial,
                                          const WindowGeometry& g) {
  const int64_t batch = keys.size(0), rows = batch * g.height, taps = g.taps();
  at::Tensor dots = at::empty({batch, taps, g.height, g.width}, keys.options());
  window_dots(keys, dots, g, &window_correlate_cpu);
  const at::Tensor norms = squared_norms(keys, variant);
  const bool euclidean = variant == RangeVariant::GaussianEuclidean;
  at::Tensor distance_grad = euclidean ? at::empty_like(dots) : at::Tensor();
  at::Tensor norm_grad = euclidean ? at::empty_like(norms) : at::Tensor();
  at::Tensor partials = at::empty({rows, 1 + taps}, keys.options());
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "normalized_range_kernel_backward_cpu", [&] {
    std::vector<scalar_t> spatial;
    const RangeArgs<scalar_t> args =
        range_args<scalar_t>(norms, range_param, sigma_spatial, variant, g, spatial);
    scalar_t* dots_ptr = dots.mutable_data_ptr<scalar_t>();
    scalar_t* distance_ptr = euclidean ? distance_grad.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* norm_ptr = euclidean ? norm_grad.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* partials_ptr = partials.mutable_data_ptr<scalar_t>();
    const scalar_t* grad_ptr = grad.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain(12 * taps * g.width), [&](int64_t begin, int64_t end) {
      backward_rows(BackwardOut<scalar_t>{dots_ptr, grad_ptr, distance_ptr, norm_ptr, partials_ptr},
                    args, begin, end);
    });
    // the rows' shares, summed in row order in double, then through the chain rule to the
    // parameters
    std::vector<double> sums(1 + taps, 0.0);
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t t = 0; t <= taps; ++t) sums[t] += double(partials_ptr[row * (1 + taps) + t]);
    }
    const scalar_t param = *range_param.const_data_ptr<scalar_t>();
    const scalar_t sigma = *sigma_spatial.const_data_ptr<scalar_t>();
    double sigma_grad = 0.0;
    for (int64_t p = 0; p < taps; ++p) {
      sigma_grad += sums[1 + p] * double(spatial_tap_derivative(p, g.size(), sigma));
    }
    grad_range_param.fill_(sums[0] * double(range_scale_derivative(variant, param)));
    grad_sigma_spatial.fill_(sigma_grad);
  });
  if (keys.size(1) == 0) return;
  window_correlation_backward_cpu(dots, keys, grad_keys, g);
  if (!euclidean) return;
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "normalized_range_kernel_norms_cpu", [&] {
    scalar_t* out = grad_keys.mutable_data_ptr<scalar_t>();
    const scalar_t* keys_ptr = keys.const_data_ptr<scalar_t>();
    const scalar_t* distance_ptr = distance_grad.const_data_ptr<scalar_t>();
    const scalar_t* norm_ptr = norm_grad.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain((2 * taps + keys.size(1)) * g.width),
                     [&](int64_t begin, int64_t end) {
                       add_norm_gradient_rows(out, keys_ptr, distance_ptr, norm_ptr,
                                              keys.size(1), g, begin, end);
                     });
  });
}

}  // namespace featup_mmseg
