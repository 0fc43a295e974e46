// CUDA launchers of the fused JBU range kernel, the counterparts of cpu/range_kernel_cpu.cpp.
//
// The window dot products come from the correlation's launcher (window_ops_cuda.cu), written
// into the output itself; one thread per pixel then turns its taps into its normalised
// kernel in place (common/range_kernel_math.h). The backward recomputes the dot products,
// turns them in place into their gradients in the same way, and hands those to the
// correlation's backward launcher. range_param and sigma_spatial are read by the kernels
// from device memory, and the scale and the spatial kernel computed there: no host sync,
// so the op can be captured in a CUDA graph. A pixel's taps live in per-thread arrays of
// a compile-time size: 49 taps (k <= 7, FeatUp's window) or 225 (k <= 15). The parameters'
// gradients are summed per thread, per block in a fixed order (warps, then the block's
// warps), then over the blocks in block order: no atomics, so the same bits every run.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "../range_kernel.h"

namespace featup_mmseg {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride loops cover the rest
// The backward's blocks each write 1 + k*k partial sums, which one block then adds: a few
// blocks per SM are enough to fill the GPU.
constexpr int64_t kMaxReduceBlocks = 1024;
constexpr int64_t kMaxKernelSize = 15;

// Runs the lambda with constexpr int T, the taps of the per-thread arrays, fitting g.
#define FEATUP_DISPATCH_MAX_TAPS(g, T, ...) \
  if ((g).taps() <= 49) {                   \
    constexpr int T = 49;                   \
    __VA_ARGS__();                          \
  } else {                                  \
    constexpr int T = 225;                  \
    __VA_ARGS__();                          \
  }

// The block's spatial kernel and scale in shared memory, from the parameters on the device.
template <typename scalar_t>
__device__ void load_parameters(scalar_t* spatial, scalar_t* scale,
                                const scalar_t* range_param, const scalar_t* sigma_spatial,
                                RangeVariant variant, const WindowGeometry& g) {
  const scalar_t sigma = *sigma_spatial;
  for (int64_t p = threadIdx.x; p < g.taps(); p += blockDim.x) {
    spatial[p] = spatial_tap(p, g.size(), sigma);
  }
  if (threadIdx.x == 0) *scale = range_scale(variant, *range_param);
  __syncthreads();
}

// dots (B, k*k, H, W) -> K in place, one thread per pixel of `pixels` = B * H * W.
template <typename scalar_t, int T>
__global__ void normalize_kernel(scalar_t* __restrict__ dots, const scalar_t* __restrict__ norms,
                                 const scalar_t* __restrict__ range_param,
                                 const scalar_t* __restrict__ sigma_spatial,
                                 RangeVariant variant, WindowGeometry g, int64_t pixels) {
  __shared__ scalar_t spatial[T];
  __shared__ scalar_t scale;
  load_parameters(spatial, &scale, range_param, sigma_spatial, variant, g);
  const int64_t taps = g.taps(), plane = g.plane();
  scalar_t values[T], window[T];
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < pixels;
       index += int64_t(blockDim.x) * gridDim.x) {
    const int64_t n = index / plane, pixel = index % plane;
    scalar_t* out = dots + n * taps * plane + pixel;
    for (int64_t p = 0; p < taps; ++p) values[p] = out[p * plane];
    scalar_t centre_norm = scalar_t(0);
    if (norms != nullptr) {
      gather_window_norms(window, norms + n * plane, g, pixel / g.width, pixel % g.width);
      centre_norm = norms[index];
    }
    normalized_range_pixel(out, plane, values, taps, variant, scale, spatial, centre_norm,
                           window);
  }
}

// dots (B, k*k, H, W) -> their gradients in place for the gradient grad of K, one thread
// per pixel; distance_grad and norm_grad (the centre norm's share, (B, 1, H, W)) for
// 'gaussian_euclidean'; partials[block] = the block's (scale's share, spatial's k*k shares).
template <typename scalar_t, int T>
__global__ void backward_kernel(scalar_t* __restrict__ dots, const scalar_t* __restrict__ grad,
                                const scalar_t* __restrict__ norms,
                                scalar_t* __restrict__ distance_grad,
                                scalar_t* __restrict__ norm_grad,
                                scalar_t* __restrict__ partials,
                                const scalar_t* __restrict__ range_param,
                                const scalar_t* __restrict__ sigma_spatial,
                                RangeVariant variant, WindowGeometry g, int64_t pixels) {
  __shared__ scalar_t spatial[T];
  __shared__ scalar_t scale;
  __shared__ scalar_t warp_sums[kWarps][T + 1];
  load_parameters(spatial, &scale, range_param, sigma_spatial, variant, g);
  const int64_t taps = g.taps(), plane = g.plane();
  scalar_t values[T], scratch[2 * T], window[T];
  scalar_t shares[T + 1];  // this thread's share of scale's gradient, then spatial's
  for (int64_t t = 0; t <= taps; ++t) shares[t] = scalar_t(0);
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < pixels;
       index += int64_t(blockDim.x) * gridDim.x) {
    const int64_t n = index / plane, pixel = index % plane, first = n * taps * plane + pixel;
    for (int64_t p = 0; p < taps; ++p) values[p] = dots[first + p * plane];
    scalar_t centre_norm = scalar_t(0);
    if (norms != nullptr) {
      gather_window_norms(window, norms + n * plane, g, pixel / g.width, pixel % g.width);
      centre_norm = norms[index];
    }
    const scalar_t centre_share = normalized_range_pixel_backward(
        values, scratch, grad + first, plane, taps, variant, scale, spatial, centre_norm, window,
        distance_grad == nullptr ? nullptr : distance_grad + first, shares, shares + 1);
    for (int64_t p = 0; p < taps; ++p) dots[first + p * plane] = values[p];
    if (norm_grad != nullptr) norm_grad[index] = centre_share;
  }
  // each warp's sums by shuffles, then the block's warps in order
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t t = 0; t <= taps; ++t) {
    scalar_t sum = shares[t];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffff, sum, offset);
    if (lane == 0) warp_sums[warp][t] = sum;
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t <= taps; t += blockDim.x) {
    scalar_t sum = warp_sums[0][t];
    for (int w = 1; w < kWarps; ++w) sum += warp_sums[w][t];
    partials[blockIdx.x * (taps + 1) + t] = sum;
  }
}

// The blocks' partial sums (blocks, 1 + k*k), added in block order in double as on the CPU,
// through the chain rule to the parameters' gradients; one block.
template <typename scalar_t, int T>
__global__ void parameter_gradients_kernel(const scalar_t* __restrict__ partials,
                                           int64_t blocks, const scalar_t* __restrict__ range_param,
                                           const scalar_t* __restrict__ sigma_spatial,
                                           RangeVariant variant, WindowGeometry g,
                                           scalar_t* __restrict__ grad_range_param,
                                           scalar_t* __restrict__ grad_sigma_spatial) {
  __shared__ double terms[T + 1];
  const int64_t taps = g.taps();
  const scalar_t sigma = *sigma_spatial;
  for (int64_t t = threadIdx.x; t <= taps; t += blockDim.x) {
    double sum = 0.0;
    for (int64_t b = 0; b < blocks; ++b) sum += double(partials[b * (taps + 1) + t]);
    terms[t] = t == 0 ? sum : sum * double(spatial_tap_derivative(t - 1, g.size(), sigma));
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  double sigma_grad = 0.0;
  for (int64_t p = 1; p <= taps; ++p) sigma_grad += terms[p];
  *grad_range_param = scalar_t(terms[0] * double(range_scale_derivative(variant, *range_param)));
  *grad_sigma_spatial = scalar_t(sigma_grad);
}

// grad_keys += 2 Q * (the gradient of |Q|^2, norm_gradient_share), one thread per pixel.
template <typename scalar_t>
__global__ void add_norm_gradient_kernel(scalar_t* __restrict__ grad_keys,
                                         const scalar_t* __restrict__ keys,
                                         const scalar_t* __restrict__ distance_grad,
                                         const scalar_t* __restrict__ norm_grad,
                                         int64_t channels, WindowGeometry g, int64_t pixels) {
  const int64_t plane = g.plane();
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < pixels;
       index += int64_t(blockDim.x) * gridDim.x) {
    const int64_t n = index / plane, pixel = index % plane;
    const scalar_t share = norm_gradient_share(distance_grad + n * g.taps() * plane,
                                               norm_grad[index], g, pixel / g.width,
                                               pixel % g.width);
    const int64_t at = n * channels * plane + pixel;
    for (int64_t c = 0; c < channels; ++c) {
      grad_keys[at + c * plane] += scalar_t(2) * keys[at + c * plane] * share;
    }
  }
}

int64_t blocks_for(int64_t pixels, int64_t max_blocks) {
  return std::min<int64_t>((pixels + kThreads - 1) / kThreads, max_blocks);
}

void check_kernel_size(const WindowGeometry& g) {
  TORCH_CHECK(g.size() <= kMaxKernelSize, "normalized_range_kernel: CUDA kernels support "
              "kernel_size up to ", kMaxKernelSize, ", got ", g.size());
}

template <typename scalar_t>
const scalar_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

template <typename scalar_t>
scalar_t* mutable_data_or_null(at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<scalar_t>() : nullptr;
}

}  // namespace

void normalized_range_kernel_cuda(const at::Tensor& keys, const at::Tensor& range_param,
                                  const at::Tensor& sigma_spatial, RangeVariant variant,
                                  at::Tensor& out, const WindowGeometry& g) {
  check_kernel_size(g);
  const c10::cuda::CUDAGuard device_guard(keys.device());
  window_dots(keys, out, g, &window_correlate_cuda);
  const at::Tensor norms = squared_norms(keys, variant);
  const int64_t pixels = keys.size(0) * g.plane();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "normalized_range_kernel_cuda", [&] {
    FEATUP_DISPATCH_MAX_TAPS(g, T, [&] {
      normalize_kernel<scalar_t, T><<<blocks_for(pixels, kMaxBlocks), kThreads, 0, stream>>>(
          out.mutable_data_ptr<scalar_t>(), data_or_null<scalar_t>(norms),
          range_param.const_data_ptr<scalar_t>(), sigma_spatial.const_data_ptr<scalar_t>(),
          variant, g, pixels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void normalized_range_kernel_backward_cuda(const at::Tensor& grad, const at::Tensor& keys,
                                           const at::Tensor& range_param,
                                           const at::Tensor& sigma_spatial,
                                           RangeVariant variant, at::Tensor& grad_keys,
                                           at::Tensor& grad_range_param,
                                           at::Tensor& grad_sigma_spatial,
                                           const WindowGeometry& g) {
  check_kernel_size(g);
  const c10::cuda::CUDAGuard device_guard(keys.device());
  const int64_t batch = keys.size(0), taps = g.taps(), pixels = batch * g.plane();
  at::Tensor dots = at::empty({batch, taps, g.height, g.width}, keys.options());
  window_dots(keys, dots, g, &window_correlate_cuda);
  const at::Tensor norms = squared_norms(keys, variant);
  const bool euclidean = variant == RangeVariant::GaussianEuclidean;
  at::Tensor distance_grad = euclidean ? at::empty_like(dots) : at::Tensor();
  at::Tensor norm_grad = euclidean ? at::empty_like(norms) : at::Tensor();
  const int64_t blocks = blocks_for(pixels, kMaxReduceBlocks);
  at::Tensor partials = at::empty({blocks, 1 + taps}, keys.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "normalized_range_kernel_backward_cuda", [&] {
    FEATUP_DISPATCH_MAX_TAPS(g, T, [&] {
      backward_kernel<scalar_t, T><<<blocks, kThreads, 0, stream>>>(
          dots.mutable_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
          data_or_null<scalar_t>(norms), mutable_data_or_null<scalar_t>(distance_grad),
          mutable_data_or_null<scalar_t>(norm_grad), partials.mutable_data_ptr<scalar_t>(),
          range_param.const_data_ptr<scalar_t>(), sigma_spatial.const_data_ptr<scalar_t>(),
          variant, g, pixels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      parameter_gradients_kernel<scalar_t, T><<<1, kThreads, 0, stream>>>(
          partials.const_data_ptr<scalar_t>(), blocks, range_param.const_data_ptr<scalar_t>(),
          sigma_spatial.const_data_ptr<scalar_t>(), variant, g,
          grad_range_param.mutable_data_ptr<scalar_t>(),
          grad_sigma_spatial.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  if (keys.size(1) == 0) return;
  window_correlation_backward_cuda(dots, keys, grad_keys, g);
  if (!euclidean) return;
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "normalized_range_kernel_norms_cuda", [&] {
    add_norm_gradient_kernel<scalar_t><<<blocks_for(pixels, kMaxBlocks), kThreads, 0, stream>>>(
        grad_keys.mutable_data_ptr<scalar_t>(), keys.const_data_ptr<scalar_t>(),
        distance_grad.const_data_ptr<scalar_t>(), norm_grad.const_data_ptr<scalar_t>(),
        keys.size(1), g, pixels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace featup_mmseg
