// CUDA kernels of the bicubic resize and its adjoint: one thread per output element over
// the element functions of bicubic_indexing.h (tests/csrc runs them on the host), in
// gather form, so nothing is scattered with atomics and every result is deterministic.
#pragma once

#include <ATen/OpMathType.h>

#include "../bicubic_indexing.h"

namespace featup_mmseg {

// out[index] = element(in, g, index) over a grid-stride loop
#define FEATUP_DEFINE_RESIZE_KERNEL(kernel_name, element)                                    \
  template <typename scalar_t>                                                               \
  __global__ void kernel_name(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,   \
                              int64_t total, ResizeGeometry g) {                             \
    using acc_t = at::opmath_type<scalar_t>;                                                 \
    for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;      \
         index += int64_t(blockDim.x) * gridDim.x) {                                         \
      out[index] = static_cast<scalar_t>(element<scalar_t, acc_t>(in, g, index));            \
    }                                                                                        \
  }

FEATUP_DEFINE_RESIZE_KERNEL(bicubic_resize_kernel, bicubic_resize_element)
FEATUP_DEFINE_RESIZE_KERNEL(bicubic_resize_adjoint_kernel, bicubic_resize_adjoint_element)

#undef FEATUP_DEFINE_RESIZE_KERNEL

}  // namespace featup_mmseg
