// Device-independent entry points of the fused JBU range kernel (range_kernel.cpp) and the
// per-device launchers they call (cpu/, cuda/). Keys of any floating dtype, parameters of
// any floating dtype: the launchers receive contiguous float32 or float64 keys (float32 for
// half-precision keys), the 0-dim parameters range_param and sigma_spatial in that dtype
// on the keys' device, and preallocated outputs with at least one pixel.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common/range_kernel_math.h"
#include "window_ops.h"

namespace featup_mmseg {

// Ops registered with the dispatcher (schemas in bindings.cpp).
// (B, k*k, H, W) = K_p = R_p S_p / max(sum_q R_q S_q, 1e-7) of keys (B, D, H, W), with the
// range kernel's scale from range_param (range_temp or sigma_range, by variant) and the
// spatial kernel S from sigma_spatial (common/range_kernel_math.h)
at::Tensor normalized_range_kernel(const at::Tensor& keys, const at::Tensor& range_param,
                                   const at::Tensor& sigma_spatial, int64_t kernel_size,
                                   c10::string_view variant, c10::string_view padding_mode);
// (grad_keys, grad_range_param, grad_sigma_spatial) for the gradient grad (B, k*k, H, W) of K
std::tuple<at::Tensor, at::Tensor, at::Tensor> normalized_range_kernel_backward(
    const at::Tensor& grad, const at::Tensor& keys, const at::Tensor& range_param,
    const at::Tensor& sigma_spatial, int64_t kernel_size, c10::string_view variant,
    c10::string_view padding_mode);

// Launchers: out, grad_keys, grad_range_param and grad_sigma_spatial are written whole.
#define FEATUP_RANGE_KERNEL_LAUNCHERS(device)                                                  \
  void normalized_range_kernel_##device(const at::Tensor& keys, const at::Tensor& range_param, \
                                        const at::Tensor& sigma_spatial, RangeVariant variant, \
                                        at::Tensor& out, const WindowGeometry& g);             \
  void normalized_range_kernel_backward_##device(                                             \
      const at::Tensor& grad, const at::Tensor& keys, const at::Tensor& range_param,          \
      const at::Tensor& sigma_spatial, RangeVariant variant, at::Tensor& grad_keys,           \
      at::Tensor& grad_range_param, at::Tensor& grad_sigma_spatial, const WindowGeometry& g)

// The window dot products of keys into dots (B, k*k, H, W), by the device's correlation
// launcher (window_ops.h), which needs channels.
inline void window_dots(const at::Tensor& keys, at::Tensor& dots, const WindowGeometry& g,
                        void (*correlate)(const at::Tensor&, const at::Tensor&, at::Tensor&,
                                          const WindowGeometry&)) {
  if (keys.size(1) == 0) {
    dots.zero_();
  } else {
    correlate(keys, keys, dots, g);
  }
}

// |Q|^2 (B, 1, H, W) for 'gaussian_euclidean', summed as the unfused composition sums it.
inline at::Tensor squared_norms(const at::Tensor& keys, RangeVariant variant) {
  return variant == RangeVariant::GaussianEuclidean ? keys.square().sum(1, true) : at::Tensor();
}

FEATUP_RANGE_KERNEL_LAUNCHERS(cpu);
#ifdef WITH_CUDA
FEATUP_RANGE_KERNEL_LAUNCHERS(cuda);
#endif

}  // namespace featup_mmseg
