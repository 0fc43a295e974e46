// Shared host/device math of the fused JBU range kernel (normalized_range_kernel): one
// pixel's k*k window dot products <Q_c, Q~_p> turned into its normalised taps
//   K_p = R_p S_p / max(sum_q R_q S_q, 1e-7),
// R the range kernel of the variant and S the spatial kernel, and back for the gradients.
// The CUDA launchers (cuda/range_kernel_cuda.cu) call the per-pixel functions, a pixel's
// taps `stride` elements apart (the H*W plane of a (B, k*k, H, W) map); the CPU launchers
// (cpu/range_kernel_cpu.cpp) share the parameter functions and run the same per-pixel
// math laid out a row of pixels at a time, for vectorisation.
#pragma once

#include <cmath>
#include <cstdint>

#include "window_indexing.h"

namespace featup_mmseg {

// 'softmax': R = softmax_p(scale * dot_p) (FeatUp; also its ablation without the key MLP);
// 'gaussian_euclidean': R = exp(-scale * max(|Q_c|^2 + |Q_p|^2 - 2 dot_p, 0));
// 'gaussian_cosine': R = exp(-scale * (1 - dot_p)) for unit keys.
enum class RangeVariant : int { Softmax = 0, GaussianEuclidean = 1, GaussianCosine = 2 };

// The floor of the tap sum that normalises the kernel.
constexpr double kTapSumFloor = 1e-7;
// The bounds of the softmax temperature exp(range_temp) (FeatUp's clamp).
constexpr double kMinTemperature = 1e-4;
constexpr double kMaxTemperature = 1e4;

template <typename acc_t>
FEATUP_HOST_DEVICE acc_t range_exp(acc_t v) {
#ifdef __CUDA_ARCH__
  return exp(v);
#else
  return std::exp(v);
#endif
}

// The range kernel's scale from its parameter: the softmax temperature
// clamp(exp(range_temp), 1e-4, 1e4), or the Gaussians' 1 / (2 sigma_range^2).
template <typename acc_t>
FEATUP_HOST_DEVICE acc_t range_scale(RangeVariant variant, acc_t param) {
  if (variant != RangeVariant::Softmax) return acc_t(1) / (acc_t(2) * param * param);
  const acc_t temperature = range_exp(param);
  return temperature < acc_t(kMinTemperature)   ? acc_t(kMinTemperature)
         : temperature > acc_t(kMaxTemperature) ? acc_t(kMaxTemperature)
                                                : temperature;
}

// d scale / d param (torch's clamp passes the gradient at its bounds, not beyond).
template <typename acc_t>
FEATUP_HOST_DEVICE acc_t range_scale_derivative(RangeVariant variant, acc_t param) {
  if (variant != RangeVariant::Softmax) return acc_t(-1) / (param * param * param);
  const acc_t temperature = range_exp(param);
  const bool inside =
      temperature >= acc_t(kMinTemperature) && temperature <= acc_t(kMaxTemperature);
  return inside ? temperature : acc_t(0);
}

// Squared offset u_i^2 + u_j^2 of tap p = i * k + j, u = torch.linspace(-1, 1, k) computed as
// torch computes it (from the nearer end).
template <typename acc_t>
FEATUP_HOST_DEVICE acc_t tap_offset_square(int64_t p, int64_t k) {
  if (k == 1) return acc_t(2);  // linspace(-1, 1, 1) = [-1]
  const acc_t step = acc_t(2) / acc_t(k - 1);
  const int64_t half = k / 2;
  const int64_t index[2] = {p / k, p % k};
  acc_t total = acc_t(0);
  for (int64_t i : index) {
    const acc_t u = i < half ? acc_t(-1) + step * acc_t(i) : acc_t(1) - step * acc_t(k - 1 - i);
    total += u * u;
  }
  return total;
}

// The spatial kernel's tap p: exp(-(u_i^2 + u_j^2) / (2 sigma_spatial^2)).
template <typename acc_t>
FEATUP_HOST_DEVICE acc_t spatial_tap(int64_t p, int64_t k, acc_t sigma) {
  return range_exp(-tap_offset_square<acc_t>(p, k) / (acc_t(2) * sigma * sigma));
}

// d spatial_tap(p) / d sigma_spatial = spatial_tap(p) (u_i^2 + u_j^2) / sigma^3.
template <typename acc_t>
FEATUP_HOST_DEVICE acc_t spatial_tap_derivative(int64_t p, int64_t k, acc_t sigma) {
  return spatial_tap(p, k, sigma) * tap_offset_square<acc_t>(p, k) / (sigma * sigma * sigma);
}

// The distance of a Gaussian variant for one tap, written as the unfused composition
// computes it (so the clamp decides alike); `through` tells whether the clamp passes
// gradients (torch's clamp_min does at the bound too).
template <typename acc_t>
FEATUP_HOST_DEVICE acc_t range_distance(acc_t dot, RangeVariant variant, acc_t centre_norm,
                                        acc_t neighbour_norm, bool* through) {
  *through = true;
  if (variant == RangeVariant::GaussianCosine) return acc_t(1) - dot;
  const acc_t distance = centre_norm + neighbour_norm - acc_t(2) * dot;
  *through = distance >= acc_t(0);
  return *through ? distance : acc_t(0);
}

// range[p] = R_p from dots[p] (they may alias). neighbour_norms: |Q~_p|^2, read by
// 'gaussian_euclidean' only.
template <typename acc_t>
FEATUP_HOST_DEVICE void range_taps(acc_t* range, const acc_t* dots, int64_t taps,
                                   RangeVariant variant, acc_t scale, acc_t centre_norm,
                                   const acc_t* neighbour_norms) {
  if (variant == RangeVariant::Softmax) {  // as F.softmax: exp(a - max a) / sum
    acc_t top = scale * dots[0];
    for (int64_t p = 1; p < taps; ++p) top = scale * dots[p] > top ? scale * dots[p] : top;
    acc_t total = acc_t(0);
    for (int64_t p = 0; p < taps; ++p) {
      range[p] = range_exp(scale * dots[p] - top);
      total += range[p];
    }
    for (int64_t p = 0; p < taps; ++p) range[p] /= total;
    return;
  }
  for (int64_t p = 0; p < taps; ++p) {
    bool through;
    const acc_t norm = variant == RangeVariant::GaussianEuclidean ? neighbour_norms[p] : acc_t(0);
    range[p] = range_exp(-scale * range_distance(dots[p], variant, centre_norm, norm, &through));
  }
}

// out[p * stride] = K_p for one pixel, from its dots[p] (a scratch copy, overwritten).
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE void normalized_range_pixel(scalar_t* out, int64_t stride, acc_t* dots,
                                               int64_t taps, RangeVariant variant, acc_t scale,
                                               const scalar_t* spatial, acc_t centre_norm,
                                               const acc_t* neighbour_norms) {
  range_taps(dots, dots, taps, variant, scale, centre_norm, neighbour_norms);
  acc_t total = acc_t(0);
  for (int64_t p = 0; p < taps; ++p) {
    dots[p] *= acc_t(spatial[p]);
    total += dots[p];
  }
  const acc_t norm = total > acc_t(kTapSumFloor) ? total : acc_t(kTapSumFloor);
  for (int64_t p = 0; p < taps; ++p) out[p * stride] = scalar_t(dots[p] / norm);
}

// The gradients of one pixel's K_p for the gradient grad[p * stride]:
// - dots[p] is replaced by the gradient of the dot product <Q_c, Q~_p> (scratch in,
//   result out); scratch: 2 * taps values;
// - distance_grad[p * stride] = the gradient of the distance of tap p, which reaches
//   |Q_c|^2 and |Q~_p|^2 ('gaussian_euclidean' only; null otherwise), and the return
//   value is their sum over p, the centre norm's share;
// - scale_grad and spatial_grad[p] accumulate this pixel's share.
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t normalized_range_pixel_backward(
    acc_t* dots, acc_t* scratch, const scalar_t* grad, int64_t stride, int64_t taps,
    RangeVariant variant, acc_t scale, const scalar_t* spatial, acc_t centre_norm,
    const acc_t* neighbour_norms, scalar_t* distance_grad, acc_t* scale_grad,
    acc_t* spatial_grad) {
  acc_t* range = scratch;              // R_p
  acc_t* range_grad = scratch + taps;  // the gradient of R_p
  range_taps(range, dots, taps, variant, scale, centre_norm, neighbour_norms);
  acc_t total = acc_t(0), grad_dot_kernel = acc_t(0);
  for (int64_t p = 0; p < taps; ++p) {
    const acc_t product = range[p] * acc_t(spatial[p]);
    total += product;
    grad_dot_kernel += acc_t(grad[p * stride]) * product;
  }
  // K = P / max(sum P, floor): dK_p/dP_q = (delta_pq - [sum P >= floor] K_p) / max(...)
  const acc_t norm = total > acc_t(kTapSumFloor) ? total : acc_t(kTapSumFloor);
  grad_dot_kernel = total >= acc_t(kTapSumFloor) ? grad_dot_kernel / norm : acc_t(0);
  acc_t range_dot_grad = acc_t(0);
  for (int64_t p = 0; p < taps; ++p) {
    const acc_t product_grad = (acc_t(grad[p * stride]) - grad_dot_kernel) / norm;
    spatial_grad[p] += product_grad * range[p];
    range_grad[p] = product_grad * acc_t(spatial[p]);
    range_dot_grad += range_grad[p] * range[p];
  }
  if (variant == RangeVariant::Softmax) {
    // R = softmax(a), a = scale * dots: da_p = R_p (dR_p - sum_q dR_q R_q)
    for (int64_t p = 0; p < taps; ++p) {
      const acc_t logit_grad = range[p] * (range_grad[p] - range_dot_grad);
      *scale_grad += logit_grad * dots[p];
      dots[p] = scale * logit_grad;
    }
    return acc_t(0);
  }
  acc_t centre_norm_grad = acc_t(0);
  for (int64_t p = 0; p < taps; ++p) {
    bool through;
    const acc_t neighbour_norm =
        variant == RangeVariant::GaussianEuclidean ? neighbour_norms[p] : acc_t(0);
    const acc_t distance = range_distance(dots[p], variant, centre_norm, neighbour_norm, &through);
    // R = exp(-scale * d): dR/dd = -scale R, dR/dscale = -d R
    const acc_t weighted = range_grad[p] * range[p];
    *scale_grad -= distance * weighted;
    const acc_t distance_gradient = through ? -scale * weighted : acc_t(0);
    if (variant == RangeVariant::GaussianCosine) {  // d = 1 - dot
      dots[p] = -distance_gradient;
    } else {  // d = |Q_c|^2 + |Q~_p|^2 - 2 dot
      dots[p] = acc_t(-2) * distance_gradient;
      distance_grad[p * stride] = scalar_t(distance_gradient);
      centre_norm_grad += distance_gradient;
    }
  }
  return centre_norm_grad;
}

// window[p] = |Q~_p|^2 for the taps of (y, x) from the norms (H, W) of one batch element (0
// where zero padding applies).
template <typename scalar_t>
FEATUP_HOST_DEVICE void gather_window_norms(scalar_t* window, const scalar_t* norms,
                                            const WindowGeometry& g, int64_t y, int64_t x) {
  const int64_t k = g.size();
  for (int64_t i = 0; i < k; ++i) {
    const int64_t sy = border_index(y + i - g.radius, g.height, g.mode);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t sx = border_index(x + j - g.radius, g.width, g.mode);
      window[i * k + j] = sy < 0 || sx < 0 ? scalar_t(0) : norms[sy * g.width + sx];
    }
  }
}

// The gradient of |Q|^2 at (ys, xs) ('gaussian_euclidean'): its centre share plus the
// distance gradients of every tap that lands on it, gathered through the border mapping.
// distance_grad: the k*k planes of one batch element.
template <typename scalar_t>
FEATUP_HOST_DEVICE scalar_t norm_gradient_share(const scalar_t* distance_grad,
                                                scalar_t centre_share, const WindowGeometry& g,
                                                int64_t ys, int64_t xs) {
  const int64_t r = g.radius;
  scalar_t share = centre_share;
  for (int64_t y = ys - r > 0 ? ys - r : 0; y <= ys + r && y < g.height; ++y) {
    for (int64_t x = xs - r > 0 ? xs - r : 0; x <= xs + r && x < g.width; ++x) {
      share += window_landing_sum<scalar_t, scalar_t>(distance_grad, g, y, x, ys, xs);
    }
  }
  return share;
}

}  // namespace featup_mmseg
