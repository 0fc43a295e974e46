// Device-independent entry points of the fused JBU range kernel (range_kernel.cpp) and the
// per-device launchers they call (cpu/). Launchers receive contiguous inputs of one
// floating dtype on one device, scale 0-dim and spatial (k*k,), and preallocated outputs
// with at least one pixel.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common/range_kernel_math.h"
#include "window_ops.h"

namespace featup_mmseg {

// Ops registered with the dispatcher (schemas in bindings.cpp).
// (B, k*k, H, W) = K_p = R_p S_p / max(sum_q R_q S_q, 1e-7) of keys (B, D, H, W)
at::Tensor normalized_range_kernel(const at::Tensor& keys, const at::Tensor& scale,
                                   const at::Tensor& spatial, int64_t kernel_size,
                                   c10::string_view variant, c10::string_view padding_mode);
// (grad_keys, grad_scale, grad_spatial) for the gradient grad (B, k*k, H, W) of K
std::tuple<at::Tensor, at::Tensor, at::Tensor> normalized_range_kernel_backward(
    const at::Tensor& grad, const at::Tensor& keys, const at::Tensor& scale,
    const at::Tensor& spatial, int64_t kernel_size, c10::string_view variant,
    c10::string_view padding_mode);

void normalized_range_kernel_cpu(const at::Tensor& keys, const at::Tensor& scale,
                                 const at::Tensor& spatial, RangeVariant variant,
                                 at::Tensor& out, const WindowGeometry& g);
// grad_scale and grad_spatial are written, grad_keys filled.
void normalized_range_kernel_backward_cpu(const at::Tensor& grad, const at::Tensor& keys,
                                          const at::Tensor& scale, const at::Tensor& spatial,
                                          RangeVariant variant, at::Tensor& grad_keys,
                                          at::Tensor& grad_scale, at::Tensor& grad_spatial,
                                          const WindowGeometry& g);

}  // namespace featup_mmseg
