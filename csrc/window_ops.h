// Device-independent entry points of the window ops (window_ops.cpp) and the
// per-device launchers they call (cpu/, cuda/). Launchers receive contiguous inputs
// of one floating dtype on one device and a preallocated output.
#pragma once

#include <ATen/ATen.h>

#include "common/window_indexing.h"

namespace featup_mmseg {

// The check of every map argument of the ops (window ops and bicubic resize): 4-D and of a
// floating dtype, or an error naming op and argument.
void check_map(const char* op, const char* name, const at::Tensor& t);

// padding_mode's PaddingMode, or an error naming the accepted modes.
PaddingMode parse_padding_mode(c10::string_view name);

// The window geometry of maps like t, or an error naming op: kernel_size positive and odd,
// and for reflect padding kernel_size // 2 < H and < W.
WindowGeometry make_geometry(const char* op, const at::Tensor& t, int64_t kernel_size,
                             c10::string_view padding_mode);

// Ops registered with the dispatcher (schemas in bindings.cpp).
at::Tensor window_correlation(const at::Tensor& keys, int64_t kernel_size,
                              c10::string_view padding_mode);
at::Tensor window_correlation_backward(const at::Tensor& grad, const at::Tensor& keys,
                                       int64_t kernel_size, c10::string_view padding_mode);
at::Tensor adaptive_conv(const at::Tensor& features, const at::Tensor& kernel,
                         c10::string_view padding_mode);
at::Tensor adaptive_conv_backward_features(const at::Tensor& grad, const at::Tensor& kernel,
                                           c10::string_view padding_mode);
at::Tensor adaptive_conv_backward_kernel(const at::Tensor& grad, const at::Tensor& features,
                                         int64_t kernel_size, c10::string_view padding_mode);

// Into a preallocated out (contiguous, of the op's result shape, dtype and device): the
// chunked JBU aggregation writes its chunks in place; accumulate adds to what out holds.
void adaptive_conv_out(const at::Tensor& features, const at::Tensor& kernel,
                       c10::string_view padding_mode, at::Tensor& out);
void adaptive_conv_backward_kernel_out(const at::Tensor& grad, const at::Tensor& features,
                                       int64_t kernel_size, c10::string_view padding_mode,
                                       at::Tensor& out, bool accumulate);

// out[b, p, y, x] = sum_c a[b, c, y, x] * b~[b, c, y + i - r, x + j - r]
void window_correlate_cpu(const at::Tensor& a, const at::Tensor& b, at::Tensor& out,
                          const WindowGeometry& g);
// the same added to out
void window_correlate_accumulate_cpu(const at::Tensor& a, const at::Tensor& b, at::Tensor& out,
                                     const WindowGeometry& g);
// out[b, c, y, x] = sum_p kernel[b, p, y, x] * values~[b, c, y + i - r, x + j - r]
void window_aggregate_cpu(const at::Tensor& kernel, const at::Tensor& values, at::Tensor& out,
                          const WindowGeometry& g);
// out = adjoint of window_aggregate w.r.t. values, applied to a
void window_aggregate_adjoint_cpu(const at::Tensor& kernel, const at::Tensor& a,
                                  at::Tensor& out, const WindowGeometry& g);
// out = window_aggregate(grad, keys) + window_aggregate_adjoint(grad, keys):
// the gradient of window_correlate(keys, keys), accumulated once in opmath precision.
void window_correlation_backward_cpu(const at::Tensor& grad, const at::Tensor& keys,
                                     at::Tensor& out, const WindowGeometry& g);

#ifdef WITH_CUDA
void window_correlate_cuda(const at::Tensor& a, const at::Tensor& b, at::Tensor& out,
                           const WindowGeometry& g);
void window_aggregate_cuda(const at::Tensor& kernel, const at::Tensor& values, at::Tensor& out,
                           const WindowGeometry& g);
void window_aggregate_adjoint_cuda(const at::Tensor& kernel, const at::Tensor& a,
                                   at::Tensor& out, const WindowGeometry& g);
void window_correlation_backward_cuda(const at::Tensor& grad, const at::Tensor& keys,
                                      at::Tensor& out, const WindowGeometry& g);
#endif

}  // namespace featup_mmseg
