// Host build of the bicubic resize's CUDA kernel bodies: evaluates the element functions of
// csrc/common/bicubic_indexing.h at every output index, exactly as the kernels in
// csrc/common/cuda/bicubic_kernels.cuh do (float64 only).
#include <cstdint>

#include "common/bicubic_indexing.h"

using featup_mmseg::ResizeGeometry;

#define FEATUP_HOST_RESIZE_KERNEL(name, element)                                       \
  extern "C" void name(const double* in, double* out, int64_t total, int64_t in_height, \
                       int64_t in_width, int64_t out_height, int64_t out_width) {        \
    const ResizeGeometry g{in_height, in_width, out_height, out_width};                  \
    for (int64_t index = 0; index < total; ++index) {                                    \
      out[index] = featup_mmseg::element<double, double>(in, g, index);                  \
    }                                                                                    \
  }

FEATUP_HOST_RESIZE_KERNEL(bicubic_resize, bicubic_resize_element)
FEATUP_HOST_RESIZE_KERNEL(bicubic_resize_adjoint, bicubic_resize_adjoint_element)
