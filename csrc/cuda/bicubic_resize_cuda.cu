// CUDA launchers of the bicubic resize and its adjoint: device guard, current stream,
// checked launches.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "../bicubic_resize.h"
#include "../common/cuda/bicubic_kernels.cuh"

namespace featup_mmseg {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride loops cover the rest

// Launches kernel<scalar_t>(in, out, out.numel(), g) on in's device and current stream.
#define FEATUP_LAUNCH_RESIZE_KERNEL(kernel, in, out, g)                                        \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, (in).scalar_type(), #kernel, [&] { \
    const c10::cuda::CUDAGuard device_guard((in).device());                                    \
    const int64_t total = (out).numel();                                                       \
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);   \
    kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(              \
        (in).const_data_ptr<scalar_t>(), (out).mutable_data_ptr<scalar_t>(), total, g);        \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                            \
  })

}  // namespace

void bicubic_resize_cuda(const at::Tensor& x, at::Tensor& out, const ResizeGeometry& g) {
  FEATUP_LAUNCH_RESIZE_KERNEL(bicubic_resize_kernel, x, out, g);
}

void bicubic_resize_adjoint_cuda(const at::Tensor& grad, at::Tensor& out,
                                 const ResizeGeometry& g) {
  FEATUP_LAUNCH_RESIZE_KERNEL(bicubic_resize_adjoint_kernel, grad, out, g);
}

}  // namespace featup_mmseg
