// CUDA kernels of the cross-scale neighbourhood attention ops: one thread per output
// element over the element functions of neighbourhood_indexing.h, in grid-stride loops.
// The transpose gathers (no atomics), so every result is deterministic.
#pragma once

#include <ATen/OpMathType.h>

#include "../neighbourhood_indexing.h"

namespace featup_mmseg {

// out[index] = element(lhs, rhs, channels, g, index) over a grid-stride loop
#define FEATUP_DEFINE_NEIGHBOURHOOD_KERNEL(kernel_name, element)                             \
  template <typename scalar_t>                                                              \
  __global__ void kernel_name(const scalar_t* __restrict__ lhs,                             \
                              const scalar_t* __restrict__ rhs, scalar_t* __restrict__ out, \
                              int64_t total, int64_t channels, NeighbourhoodGeometry g) {   \
    using acc_t = at::opmath_type<scalar_t>;                                                \
    for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;     \
         index += int64_t(blockDim.x) * gridDim.x) {                                        \
      out[index] = static_cast<scalar_t>(element<scalar_t, acc_t>(lhs, rhs, channels, g, index)); \
    }                                                                                       \
  }

FEATUP_DEFINE_NEIGHBOURHOOD_KERNEL(neighbourhood_scores_kernel, neighbourhood_scores_element)
FEATUP_DEFINE_NEIGHBOURHOOD_KERNEL(neighbourhood_aggregate_kernel,
                                   neighbourhood_aggregate_element)
FEATUP_DEFINE_NEIGHBOURHOOD_KERNEL(neighbourhood_transpose_kernel,
                                   neighbourhood_transpose_element)

#undef FEATUP_DEFINE_NEIGHBOURHOOD_KERNEL

}  // namespace featup_mmseg
