// Host build of the CUDA kernels' bodies: evaluates the element functions of
// csrc/common/window_indexing.h at every output index, exactly as the kernels in
// csrc/common/cuda/window_kernels.cuh do, so machines without a GPU test that math too.
// Built and loaded through ctypes by tests/test_device_elements.py (float64 only).
#include <cstdint>

#include "common/window_indexing.h"

using featup_mmseg::PaddingMode;
using featup_mmseg::WindowGeometry;

#define FEATUP_HOST_KERNEL(name, element)                                                   \
  extern "C" void name(const double* lhs, const double* rhs, double* out, int64_t total,    \
                       int64_t channels, int64_t height, int64_t width, int64_t radius,     \
                       int mode) {                                                          \
    const WindowGeometry g{height, width, radius, static_cast<PaddingMode>(mode)};          \
    for (int64_t index = 0; index < total; ++index) {                                       \
      out[index] = featup_mmseg::element<double, double>(lhs, rhs, channels, g, index);     \
    }                                                                                       \
  }

FEATUP_HOST_KERNEL(window_correlate, window_correlate_element)
FEATUP_HOST_KERNEL(window_aggregate, window_aggregate_element)
FEATUP_HOST_KERNEL(window_aggregate_adjoint, window_aggregate_adjoint_element)
FEATUP_HOST_KERNEL(window_correlation_backward, window_correlation_backward_element)

// Every tap of the zero-padded kernel, as the tiled CUDA kernels' rewrite computes it.
extern "C" void window_zero_padded_kernel(const double* kernel, double* out, int64_t batch,
                                          int64_t height, int64_t width, int64_t radius,
                                          int mode, bool forward, bool adjoint) {
  const WindowGeometry g{height, width, radius, static_cast<PaddingMode>(mode)};
  const int64_t k = g.size(), plane = g.plane();
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t p = 0; p < g.taps(); ++p) {
      for (int64_t pixel = 0; pixel < plane; ++pixel) {
        out[(n * g.taps() + p) * plane + pixel] =
            featup_mmseg::window_zero_padded_tap<double, double>(
                kernel + n * g.taps() * plane, g, forward, adjoint, pixel / width,
                pixel % width, p / k, p % k);
      }
    }
  }
}
