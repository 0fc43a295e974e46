// Registers the window ops, the fused range kernel, the neighbourhood attention ops, the
// bicubic resize and the (CPU-only) dropout ops with the PyTorch dispatcher (schemas, CPU
// and CUDA kernels) and makes featup_mmseg._ext an importable Python module. Fake (meta)
// kernels and autograd formulas are registered from Python in featup_mmseg/ops/window_ops.py.
#include <torch/extension.h>
#include <torch/library.h>

#include "bicubic_resize.h"
#include "dropout_ops.h"
#include "neighbourhood_attention.h"
#include "range_kernel.h"
#include "window_ops.h"

TORCH_LIBRARY(featup_mmseg, m) {
  m.def("window_correlation(Tensor keys, int kernel_size, str padding_mode) -> Tensor");
  m.def(
      "window_correlation_backward(Tensor grad, Tensor keys, int kernel_size, str padding_mode)"
      " -> Tensor");
  m.def("adaptive_conv(Tensor features, Tensor kernel, str padding_mode) -> Tensor");
  m.def("adaptive_conv_backward_features(Tensor grad, Tensor kernel, str padding_mode) -> Tensor");
  m.def(
      "adaptive_conv_backward_kernel(Tensor grad, Tensor features, int kernel_size,"
      " str padding_mode) -> Tensor");
  // into a preallocated out, without autograd (the chunked JBU aggregation's own backward)
  m.def(
      "adaptive_conv_out(Tensor features, Tensor kernel, str padding_mode, Tensor(a!) out)"
      " -> ()");
  m.def(
      "adaptive_conv_backward_kernel_out(Tensor grad, Tensor features, int kernel_size,"
      " str padding_mode, Tensor(a!) out, bool accumulate) -> ()");
  m.def(
      "neighbourhood_attention_scores(Tensor queries, Tensor keys, int kernel_size, int dilation,"
      " str border) -> Tensor");
  m.def(
      "neighbourhood_attention_aggregate(Tensor attn, Tensor values, int dilation, str border)"
      " -> Tensor");
  m.def(
      "neighbourhood_attention_transpose(Tensor attn, Tensor features, int[2] input_size,"
      " int dilation, str border) -> Tensor");
  // one JBU stage's normalised range kernel (variant: softmax, gaussian_euclidean,
  // gaussian_cosine), and its gradients for keys and the two parameters
  m.def(
      "normalized_range_kernel(Tensor keys, Tensor range_param, Tensor sigma_spatial,"
      " int kernel_size, str variant, str padding_mode) -> Tensor");
  m.def(
      "normalized_range_kernel_backward(Tensor grad, Tensor keys, Tensor range_param,"
      " Tensor sigma_spatial, int kernel_size, str variant, str padding_mode)"
      " -> (Tensor, Tensor, Tensor)");
  m.def("bicubic_resize(Tensor x, int[2] size) -> Tensor");
  m.def("bicubic_resize_backward(Tensor grad, int[2] input_size) -> Tensor");
  // draws from the default generator: never merged with, or reordered across, another draw
  m.def("bernoulli_out(Tensor(a!) out, float p) -> ()", {at::Tag::nondeterministic_seeded});
  m.def("masked_dot(Tensor x, Tensor keep, Tensor weight) -> Tensor");
  m.def(
      "masked_dot_backward(Tensor grad, Tensor x, Tensor keep, Tensor weight,"
      " bool[2] output_mask) -> (Tensor, Tensor)");
}

#define FEATUP_REGISTER_OPS(m)                                                    \
  m.impl("window_correlation", &featup_mmseg::window_correlation);                       \
  m.impl("window_correlation_backward", &featup_mmseg::window_correlation_backward);     \
  m.impl("adaptive_conv", &featup_mmseg::adaptive_conv);                                 \
  m.impl("adaptive_conv_backward_features", &featup_mmseg::adaptive_conv_backward_features); \
  m.impl("adaptive_conv_backward_kernel", &featup_mmseg::adaptive_conv_backward_kernel); \
  m.impl("adaptive_conv_out", &featup_mmseg::adaptive_conv_out);                         \
  m.impl("adaptive_conv_backward_kernel_out", &featup_mmseg::adaptive_conv_backward_kernel_out); \
  m.impl("neighbourhood_attention_scores", &featup_mmseg::neighbourhood_attention_scores); \
  m.impl("neighbourhood_attention_aggregate", &featup_mmseg::neighbourhood_attention_aggregate); \
  m.impl("neighbourhood_attention_transpose", &featup_mmseg::neighbourhood_attention_transpose); \
  m.impl("bicubic_resize", &featup_mmseg::bicubic_resize);                               \
  m.impl("bicubic_resize_backward", &featup_mmseg::bicubic_resize_backward);              \
  m.impl("normalized_range_kernel", &featup_mmseg::normalized_range_kernel);             \
  m.impl("normalized_range_kernel_backward", &featup_mmseg::normalized_range_kernel_backward)

TORCH_LIBRARY_IMPL(featup_mmseg, CPU, m) {
  FEATUP_REGISTER_OPS(m);
  m.impl("bernoulli_out", &featup_mmseg::bernoulli_out);
  m.impl("masked_dot", &featup_mmseg::masked_dot);
  m.impl("masked_dot_backward", &featup_mmseg::masked_dot_backward);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(featup_mmseg, CUDA, m) { FEATUP_REGISTER_OPS(m); }
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def(
      "compiled_with_cuda",
      [] {
#ifdef WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether the CUDA kernels were compiled into this build.");
}
