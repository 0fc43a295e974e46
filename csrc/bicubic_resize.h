// Device-independent entry points of the bicubic resize (bicubic_resize.cpp) and the
// per-device launchers they call (cpu/, cuda/). Launchers receive an input of one floating
// dtype (contiguous for CUDA; for the CPU with contiguous (H, W) planes, at any batch and
// channel strides) and a preallocated contiguous output, both non-empty.
#pragma once

#include <ATen/ATen.h>

#include "common/bicubic_indexing.h"

namespace featup_mmseg {

// Ops registered with the dispatcher (schemas in bindings.cpp).
// x (B, C, h, w) -> (B, C, size[0], size[1]), F.interpolate(mode='bicubic',
// align_corners=False)
at::Tensor bicubic_resize(const at::Tensor& x, at::IntArrayRef size);
// grad (B, C, H, W) -> (B, C, input_size[0], input_size[1]): the resize's adjoint (its
// gradient) for an input of input_size
at::Tensor bicubic_resize_backward(const at::Tensor& grad, at::IntArrayRef input_size);

void bicubic_resize_cpu(const at::Tensor& x, at::Tensor& out, const ResizeGeometry& g);
void bicubic_resize_adjoint_cpu(const at::Tensor& grad, at::Tensor& out,
                                const ResizeGeometry& g);

#ifdef WITH_CUDA
void bicubic_resize_cuda(const at::Tensor& x, at::Tensor& out, const ResizeGeometry& g);
void bicubic_resize_adjoint_cuda(const at::Tensor& grad, at::Tensor& out,
                                 const ResizeGeometry& g);
#endif

}  // namespace featup_mmseg
