// CUDA launchers of the window ops: device guard, current stream, checked launches.
// Only c10/cuda headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers
// that minimal CUDA toolkits do not ship.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "../common/cuda/window_kernels.cuh"
#include "../window_ops.h"

namespace featup_mmseg {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride loops cover the rest

// Launches kernel<scalar_t>(lhs, rhs, out, out.numel(), channels, g) on the current stream.
#define FEATUP_LAUNCH_WINDOW_KERNEL(kernel, lhs, rhs, out, channels, g)                       \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, (rhs).scalar_type(), #kernel, [&] { \
    const int64_t total = (out).numel();                                                      \
    if (total == 0) return;                                                                   \
    const c10::cuda::CUDAGuard device_guard((rhs).device());                                  \
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);  \
    kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(             \
        (lhs).const_data_ptr<scalar_t>(), (rhs).const_data_ptr<scalar_t>(),                   \
        (out).mutable_data_ptr<scalar_t>(), total, channels, g);                              \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                           \
  })

}  // namespace

void window_correlate_cuda(const at::Tensor& a, const at::Tensor& b, at::Tensor& out,
                           const WindowGeometry& g) {
  FEATUP_LAUNCH_WINDOW_KERNEL(window_correlate_kernel, a, b, out, a.size(1), g);
}

void window_aggregate_cuda(const at::Tensor& kernel, const at::Tensor& values, at::Tensor& out,
                           const WindowGeometry& g) {
  FEATUP_LAUNCH_WINDOW_KERNEL(window_aggregate_kernel, kernel, values, out, values.size(1), g);
}

void window_aggregate_adjoint_cuda(const at::Tensor& kernel, const at::Tensor& a,
                                   at::Tensor& out, const WindowGeometry& g) {
  FEATUP_LAUNCH_WINDOW_KERNEL(window_aggregate_adjoint_kernel, kernel, a, out, a.size(1), g);
}

void window_correlation_backward_cuda(const at::Tensor& grad, const at::Tensor& keys,
                                      at::Tensor& out, const WindowGeometry& g) {
  FEATUP_LAUNCH_WINDOW_KERNEL(window_correlation_backward_kernel, grad, keys, out, keys.size(1),
                              g);
}

}  // namespace featup_mmseg
