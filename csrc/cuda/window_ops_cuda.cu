// CUDA launchers of the window ops: device guard, current stream, checked launches.
// Only c10/cuda headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers
// that minimal CUDA toolkits do not ship.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

#include "../common/cuda/window_kernels.cuh"
#include "../window_ops.h"

namespace featup_mmseg {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride loops cover the rest
// Tiled launches split channels over blocks until about this many blocks per SM exist, in
// ranges of at least this many channels: aggregation reloads the kernel per range,
// correlation writes a slice of partial sums per range.
constexpr int64_t kAggregateBlocksPerSM = 4;
constexpr int64_t kAggregateMinChannels = 4;
constexpr int64_t kCorrelateBlocksPerSM = 2;
constexpr int64_t kCorrelateMinChannels = 32;

bool is_tiled(const WindowGeometry& g) { return g.radius >= 1 && g.radius <= 3; }

int64_t multiprocessor_count(const at::Tensor& t) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, t.get_device()));
  return count;
}

// The tiles of every map of t, all channels in one range.
TileGrid map_tiles(const at::Tensor& t, const WindowGeometry& g) {
  TileGrid grid;
  grid.tiles_x = (g.width + kTileWidth - 1) / kTileWidth;
  grid.tiles_per_map = grid.tiles_x * ((g.height + kTileHeight - 1) / kTileHeight);
  grid.channels_per_block = t.size(1);
  TORCH_CHECK(grid.tiles_per_map * t.size(0) <= std::numeric_limits<int>::max(),
              "window ops: ", t.sizes(), " has too many pixels for one CUDA launch");
  return grid;
}

// The tiles of every map of t, channels split into ranges of at least min_channels channels
// so that about blocks_per_sm blocks per SM exist; sets the number of ranges.
TileGrid tiles_and_channel_ranges(const at::Tensor& t, const WindowGeometry& g,
                                  int64_t blocks_per_sm, int64_t min_channels,
                                  int64_t* channel_ranges) {
  TileGrid grid = map_tiles(t, g);
  const int64_t blocks = grid.tiles_per_map * t.size(0), channels = t.size(1);
  const int64_t wanted = blocks_per_sm * multiprocessor_count(t);
  const int64_t ranges = std::max<int64_t>(
      1, std::min<int64_t>({(wanted + blocks - 1) / blocks, channels / min_channels, 65535}));
  grid.channels_per_block = (channels + ranges - 1) / ranges;
  *channel_ranges = (channels + grid.channels_per_block - 1) / grid.channels_per_block;
  return grid;
}

#define FEATUP_DISPATCH_TILE_SIZE(g, K, ...)  \
  switch ((g).radius) {                       \
    case 1: {                                 \
      constexpr int K = 3;                    \
      __VA_ARGS__();                          \
      break;                                  \
    }                                         \
    case 2: {                                 \
      constexpr int K = 5;                    \
      __VA_ARGS__();                          \
      break;                                  \
    }                                         \
    default: {                                \
      constexpr int K = 7;                    \
      __VA_ARGS__();                          \
    }                                         \
  }

// out = window_aggregate(kernel, values) with the geometry's padding.
void aggregate_tiled(const at::Tensor& kernel, const at::Tensor& values, at::Tensor& out,
                     const WindowGeometry& g) {
  int64_t ranges = 0;
  const TileGrid grid =
      tiles_and_channel_ranges(values, g, kAggregateBlocksPerSM, kAggregateMinChannels, &ranges);
  const dim3 blocks(grid.tiles_per_map * values.size(0), ranges);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(),
                                  "window_aggregate_tiled", [&] {
    FEATUP_DISPATCH_TILE_SIZE(g, K, [&] {
      window_aggregate_tiled_kernel<scalar_t, K><<<blocks, kTileThreads, 0, stream>>>(
          kernel.const_data_ptr<scalar_t>(), values.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), values.size(1), g, grid);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// out = window_correlate(a, b): each channel range sums into its own slice of opmath
// partial sums, which are then added in order (no atomics); one range writes out directly
// where out is already in opmath precision.
void correlate_tiled(const at::Tensor& a, const at::Tensor& b, at::Tensor& out,
                     const WindowGeometry& g) {
  int64_t ranges = 0;
  const TileGrid grid =
      tiles_and_channel_ranges(b, g, kCorrelateBlocksPerSM, kCorrelateMinChannels, &ranges);
  const dim3 blocks(grid.tiles_per_map * b.size(0), ranges);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto opmath = at::toOpMathType(b.scalar_type());
  const bool direct = ranges == 1 && opmath == b.scalar_type();
  at::Tensor partial = direct ? out
                              : at::empty({ranges, out.size(0), out.size(1), out.size(2),
                                           out.size(3)}, out.options().dtype(opmath));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(),
                                  "window_correlate_tiled", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    FEATUP_DISPATCH_TILE_SIZE(g, K, [&] {
      window_correlate_tiled_kernel<scalar_t, K><<<blocks, kTileThreads, 0, stream>>>(
          a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
          partial.mutable_data_ptr<acc_t>(), b.size(1), g, grid);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  if (!direct) out.copy_(ranges == 1 ? partial[0] : partial.sum(0));
}

// The kernel (B, k*k, H, W) whose zero-padded aggregation gives kernel's aggregation with
// the geometry's padding (forward) plus its adjoint (adjoint).
at::Tensor zero_padded_kernel(const at::Tensor& kernel, const WindowGeometry& g, bool forward,
                              bool adjoint) {
  at::Tensor out = at::empty_like(kernel);
  const TileGrid grid = map_tiles(kernel, g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, kernel.scalar_type(),
                                  "window_zero_padded_kernel", [&] {
    window_zero_padded_kernel_tiled_kernel<scalar_t>
        <<<grid.tiles_per_map * kernel.size(0), kTileThreads, 0,
           c10::cuda::getCurrentCUDAStream()>>>(kernel.const_data_ptr<scalar_t>(),
                                                out.mutable_data_ptr<scalar_t>(), g, grid,
                                                forward, adjoint);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

WindowGeometry with_zero_padding(WindowGeometry g) {
  g.mode = PaddingMode::Zeros;
  return g;
}

// Launches kernel<scalar_t>(lhs, rhs, out, out.numel(), channels, g) on the current stream:
// one thread per output element, for window sizes without a tiled kernel.
#define FEATUP_LAUNCH_WINDOW_KERNEL(kernel, lhs, rhs, out, channels, g)                       \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, (rhs).scalar_type(), #kernel, [&] { \
    const int64_t total = (out).numel();                                                      \
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);  \
    kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(             \
        (lhs).const_data_ptr<scalar_t>(), (rhs).const_data_ptr<scalar_t>(),                   \
        (out).mutable_data_ptr<scalar_t>(), total, channels, g);                              \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                           \
  })

}  // namespace

// Callers (window_ops.cpp) launch only for non-empty outputs and inputs.

void window_correlate_cuda(const at::Tensor& a, const at::Tensor& b, at::Tensor& out,
                           const WindowGeometry& g) {
  const c10::cuda::CUDAGuard device_guard(b.device());
  if (is_tiled(g)) return correlate_tiled(a, b, out, g);
  FEATUP_LAUNCH_WINDOW_KERNEL(window_correlate_kernel, a, b, out, a.size(1), g);
}

void window_aggregate_cuda(const at::Tensor& kernel, const at::Tensor& values, at::Tensor& out,
                           const WindowGeometry& g) {
  const c10::cuda::CUDAGuard device_guard(values.device());
  if (is_tiled(g)) return aggregate_tiled(kernel, values, out, g);
  FEATUP_LAUNCH_WINDOW_KERNEL(window_aggregate_kernel, kernel, values, out, values.size(1), g);
}

void window_aggregate_adjoint_cuda(const at::Tensor& kernel, const at::Tensor& a,
                                   at::Tensor& out, const WindowGeometry& g) {
  const c10::cuda::CUDAGuard device_guard(a.device());
  if (is_tiled(g)) {
    return aggregate_tiled(zero_padded_kernel(kernel, g, false, true), a, out,
                           with_zero_padding(g));
  }
  FEATUP_LAUNCH_WINDOW_KERNEL(window_aggregate_adjoint_kernel, kernel, a, out, a.size(1), g);
}

void window_correlation_backward_cuda(const at::Tensor& grad, const at::Tensor& keys,
                                      at::Tensor& out, const WindowGeometry& g) {
  const c10::cuda::CUDAGuard device_guard(keys.device());
  if (is_tiled(g)) {
    return aggregate_tiled(zero_padded_kernel(grad, g, true, true), keys, out,
                           with_zero_padding(g));
  }
  FEATUP_LAUNCH_WINDOW_KERNEL(window_correlation_backward_kernel, grad, keys, out, keys.size(1),
                              g);
}

}  // namespace featup_mmseg
