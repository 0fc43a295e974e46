// Host build of the neighbourhood attention CUDA kernels' bodies: evaluates the element
// functions of csrc/common/neighbourhood_indexing.h at every output index, exactly as the
// kernels in csrc/common/cuda/neighbourhood_kernels.cuh do, so machines without a GPU test
// that math too. Built and loaded through ctypes by tests/test_device_elements.py
// (float64 only).
#include <cstdint>

#include "common/neighbourhood_indexing.h"

using featup_mmseg::NeighbourhoodBorder;
using featup_mmseg::NeighbourhoodGeometry;

#define FEATUP_NEIGHBOURHOOD_HOST_KERNEL(name, element)                                     \
  extern "C" void name(const double* lhs, const double* rhs, double* out, int64_t total,    \
                       int64_t channels, int64_t height, int64_t width, int64_t in_height,  \
                       int64_t in_width, int64_t kernel_size, int64_t dilation, int border) { \
    const NeighbourhoodGeometry g{height,      width,    in_height,                         \
                                  in_width,    kernel_size, dilation,                       \
                                  static_cast<NeighbourhoodBorder>(border)};                \
    for (int64_t index = 0; index < total; ++index) {                                       \
      out[index] = featup_mmseg::element<double, double>(lhs, rhs, channels, g, index);     \
    }                                                                                       \
  }

FEATUP_NEIGHBOURHOOD_HOST_KERNEL(neighbourhood_scores, neighbourhood_scores_element)
FEATUP_NEIGHBOURHOOD_HOST_KERNEL(neighbourhood_aggregate, neighbourhood_aggregate_element)
FEATUP_NEIGHBOURHOOD_HOST_KERNEL(neighbourhood_transpose, neighbourhood_transpose_element)
