// CUDA kernels of the window ops: one thread per output element, evaluating the
// element functions of window_indexing.h in opmath precision (tests/csrc runs the
// same functions on the host). Gradients are gathered, not scattered with atomics, so
// results are deterministic.
#pragma once

#include <ATen/OpMathType.h>

#include "../window_indexing.h"

namespace featup_mmseg {

// out[index] = element(lhs, rhs, channels, g, index) over a grid-stride loop
#define FEATUP_DEFINE_WINDOW_KERNEL(kernel_name, element)                                   \
  template <typename scalar_t>                                                              \
  __global__ void kernel_name(const scalar_t* __restrict__ lhs,                             \
                              const scalar_t* __restrict__ rhs, scalar_t* __restrict__ out, \
                              int64_t total, int64_t channels, WindowGeometry g) {          \
    using acc_t = at::opmath_type<scalar_t>;                                                \
    for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;     \
         index += int64_t(blockDim.x) * gridDim.x) {                                        \
      out[index] = static_cast<scalar_t>(element<scalar_t, acc_t>(lhs, rhs, channels, g, index)); \
    }                                                                                       \
  }

FEATUP_DEFINE_WINDOW_KERNEL(window_correlate_kernel, window_correlate_element)
FEATUP_DEFINE_WINDOW_KERNEL(window_aggregate_kernel, window_aggregate_element)
FEATUP_DEFINE_WINDOW_KERNEL(window_aggregate_adjoint_kernel, window_aggregate_adjoint_element)
FEATUP_DEFINE_WINDOW_KERNEL(window_correlation_backward_kernel,
                            window_correlation_backward_element)

#undef FEATUP_DEFINE_WINDOW_KERNEL

}  // namespace featup_mmseg
