// CUDA launchers of the cross-scale neighbourhood attention ops: device guard, current
// stream, checked launches. Callers (neighbourhood_attention.cpp) launch only for non-empty
// outputs and inputs.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "../common/cuda/neighbourhood_kernels.cuh"
#include "../neighbourhood_attention.h"

namespace featup_mmseg {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride loops cover the rest

// Launches kernel<scalar_t>(lhs, rhs, out, out.numel(), channels, g) on the current stream,
// one thread per output element.
#define FEATUP_LAUNCH_NEIGHBOURHOOD_KERNEL(kernel, lhs, rhs, out, channels, g)                \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, (rhs).scalar_type(), #kernel, [&] { \
    const int64_t total = (out).numel();                                                      \
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);  \
    kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(             \
        (lhs).const_data_ptr<scalar_t>(), (rhs).const_data_ptr<scalar_t>(),                   \
        (out).mutable_data_ptr<scalar_t>(), total, channels, g);                              \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                           \
  })

}  // namespace

void neighbourhood_scores_cuda(const at::Tensor& queries, const at::Tensor& keys,
                               at::Tensor& out, const NeighbourhoodGeometry& g) {
  const c10::cuda::CUDAGuard device_guard(queries.device());
  FEATUP_LAUNCH_NEIGHBOURHOOD_KERNEL(neighbourhood_scores_kernel, queries, keys, out,
                                     queries.size(1), g);
}

void neighbourhood_aggregate_cuda(const at::Tensor& attn, const at::Tensor& values,
                                  at::Tensor& out, const NeighbourhoodGeometry& g) {
  const c10::cuda::CUDAGuard device_guard(values.device());
  FEATUP_LAUNCH_NEIGHBOURHOOD_KERNEL(neighbourhood_aggregate_kernel, attn, values, out,
                                     values.size(1), g);
}

void neighbourhood_transpose_cuda(const at::Tensor& attn, const at::Tensor& features,
                                  at::Tensor& out, const NeighbourhoodGeometry& g) {
  const c10::cuda::CUDAGuard device_guard(features.device());
  FEATUP_LAUNCH_NEIGHBOURHOOD_KERNEL(neighbourhood_transpose_kernel, attn, features, out,
                                     features.size(1), g);
}

}  // namespace featup_mmseg
