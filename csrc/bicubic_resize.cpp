// Argument checks, output allocation and device dispatch of the bicubic resize. The Python
// API (featup_mmseg/ops) checks arguments first with friendlier messages; these checks keep
// direct torch.ops calls from reaching a kernel with bad shapes.
#include "bicubic_resize.h"

#include "window_ops.h"  // check_map

namespace featup_mmseg {
namespace {

using Launcher = void (*)(const at::Tensor&, at::Tensor&, const ResizeGeometry&);

// The resize (adjoint false) or its adjoint (true) of input (B, C, *, *) to size.
at::Tensor resize_planes(const char* op, const char* name, const at::Tensor& input,
                         const char* size_name, at::IntArrayRef size, bool adjoint,
                         Launcher cpu, Launcher cuda) {
  check_map(op, name, input);
  TORCH_CHECK(size.size() == 2 && size[0] > 0 && size[1] > 0, op, ": ", size_name,
              " must be two positive sizes (H, W), got ", size);
  TORCH_CHECK(input.size(2) > 0 && input.size(3) > 0, op, ": ", name,
              " must have a non-empty spatial size, got ", input.sizes());
  at::Tensor out = at::empty({input.size(0), input.size(1), size[0], size[1]}, input.options());
  if (out.numel() == 0) return out;
  const ResizeGeometry g = adjoint
      ? ResizeGeometry{size[0], size[1], input.size(2), input.size(3)}
      : ResizeGeometry{input.size(2), input.size(3), size[0], size[1]};
  if (input.is_cuda()) {
    cuda(input.contiguous(), out, g);
  } else {
    // The CPU launchers read planes in place: a channel slice of a batch is not copied.
    const bool planes_contiguous = input.stride(3) == 1 && input.stride(2) == input.size(3);
    cpu(planes_contiguous ? input : input.contiguous(), out, g);
  }
  return out;
}

}  // namespace

#ifdef WITH_CUDA
#define FEATUP_RESIZE_LAUNCHERS(name) &name##_cpu, &name##_cuda
#else
// Without CUDA kernels no CUDA implementation is registered, so the second is never called.
#define FEATUP_RESIZE_LAUNCHERS(name) &name##_cpu, nullptr
#endif

at::Tensor bicubic_resize(const at::Tensor& x, at::IntArrayRef size) {
  return resize_planes("bicubic_resize", "x", x, "size", size, false,
                       FEATUP_RESIZE_LAUNCHERS(bicubic_resize));
}

at::Tensor bicubic_resize_backward(const at::Tensor& grad, at::IntArrayRef input_size) {
  return resize_planes("bicubic_resize_backward", "grad", grad, "input_size", input_size,
                       true, FEATUP_RESIZE_LAUNCHERS(bicubic_resize_adjoint));
}

}  // namespace featup_mmseg
