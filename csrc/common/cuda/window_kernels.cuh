// CUDA kernels of the window ops.
//
// Window sizes 3, 5 and 7 run tiled kernels: a block owns a 32 x 8 tile of output pixels of
// one map and a range of channels; per channel it stages the tile's window (the tile plus
// an r-pixel border, borders resolved once per block) in shared memory, alternating
// between two buffers so that one barrier per channel suffices, and each thread keeps the
// k*k taps of its pixel in registers. The gradients that gather through the border
// mapping (the adjoint of the aggregation, the correlation's gradient) first rewrite their
// k*k kernel into one that gives the same sums with zero padding
// (window_zero_padded_tap), then run the tiled aggregation. Other window sizes run one
// thread per output element over the element functions of window_indexing.h (tests/csrc
// runs those, and the rewrite, on the host). Nothing is scattered with atomics and channel
// ranges are reduced in a fixed order, so every result is deterministic.
#pragma once

#include <ATen/OpMathType.h>

#include "../window_indexing.h"

namespace featup_mmseg {

// out[index] = element(lhs, rhs, channels, g, index) over a grid-stride loop
#define FEATUP_DEFINE_WINDOW_KERNEL(kernel_name, element)                                   \
  template <typename scalar_t>                                                              \
  __global__ void kernel_name(const scalar_t* __restrict__ lhs,                             \
                              const scalar_t* __restrict__ rhs, scalar_t* __restrict__ out, \
                              int64_t total, int64_t channels, WindowGeometry g) {          \
    using acc_t = at::opmath_type<scalar_t>;                                                \
    for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;     \
         index += int64_t(blockDim.x) * gridDim.x) {                                        \
      out[index] = static_cast<scalar_t>(element<scalar_t, acc_t>(lhs, rhs, channels, g, index)); \
    }                                                                                       \
  }

FEATUP_DEFINE_WINDOW_KERNEL(window_correlate_kernel, window_correlate_element)
FEATUP_DEFINE_WINDOW_KERNEL(window_aggregate_kernel, window_aggregate_element)
FEATUP_DEFINE_WINDOW_KERNEL(window_aggregate_adjoint_kernel, window_aggregate_adjoint_element)
FEATUP_DEFINE_WINDOW_KERNEL(window_correlation_backward_kernel,
                            window_correlation_backward_element)

#undef FEATUP_DEFINE_WINDOW_KERNEL

// One warp per tile row: a warp's shared-memory reads are consecutive words.
constexpr int kTileWidth = 32;
constexpr int kTileHeight = 8;
constexpr int kTileThreads = kTileWidth * kTileHeight;

// Where a block's output tile lies: blockIdx.x enumerates (map, tile row, tile column),
// blockIdx.y the block's channel range.
struct TileGrid {
  int64_t tiles_x;
  int64_t tiles_per_map;
  int64_t channels_per_block;
};

// This thread's output pixel: the block's map n and tile origin (y0, x0), the pixel (y, x)
// and its flat index, and whether it lies in the map (threads past the map's edge still
// take part in loading the tile's window).
struct TilePixel {
  int tx, ty;
  int64_t n, y0, x0, y, x, pixel;
  bool inside;

  __device__ TilePixel(const TileGrid& grid, const WindowGeometry& g)
      : tx(threadIdx.x % kTileWidth), ty(threadIdx.x / kTileWidth) {
    n = blockIdx.x / grid.tiles_per_map;
    const int64_t tile = blockIdx.x % grid.tiles_per_map;
    y0 = tile / grid.tiles_x * kTileHeight;
    x0 = tile % grid.tiles_x * kTileWidth;
    y = y0 + ty;
    x = x0 + tx;
    pixel = y * g.width + x;
    inside = y < g.height && x < g.width;
  }
};

// The window of a tile of one plane, (kTileHeight + 2r) x (kTileWidth + 2r) values staged
// in shared memory in opmath precision. Each thread always loads the same entries, so their
// border-resolved source offsets are computed once per block (-1: a zero).
template <typename scalar_t, typename acc_t, int K>
struct TileWindow {
  static constexpr int kRadius = K / 2;
  static constexpr int kWidth = kTileWidth + 2 * kRadius;
  static constexpr int kHeight = kTileHeight + 2 * kRadius;
  static constexpr int kEntries = kWidth * kHeight;
  static constexpr int kPerThread = (kEntries + kTileThreads - 1) / kTileThreads;

  int64_t source[kPerThread];

  // Positions past the map by more than r only feed threads outside the map.
  static __device__ int64_t resolve(int64_t t, int64_t n, PaddingMode mode) {
    return t < -kRadius || t > n - 1 + kRadius ? -1 : border_index(t, n, mode);
  }

  __device__ TileWindow(const WindowGeometry& g, int64_t y0, int64_t x0) {
#pragma unroll
    for (int n = 0; n < kPerThread; ++n) {
      const int entry = threadIdx.x + n * kTileThreads;
      source[n] = -1;
      if (entry >= kEntries) continue;
      const int64_t sy = resolve(y0 + entry / kWidth - kRadius, g.height, g.mode);
      const int64_t sx = resolve(x0 + entry % kWidth - kRadius, g.width, g.mode);
      if (sy >= 0 && sx >= 0) source[n] = sy * g.width + sx;
    }
  }

  // The entries of one plane, read ahead of the barrier that publishes them.
  struct Values {
    acc_t entry[kPerThread];
  };

  __device__ Values fetch(const scalar_t* plane) const {
    Values values;
#pragma unroll
    for (int n = 0; n < kPerThread; ++n) {
      values.entry[n] = source[n] >= 0 ? acc_t(plane[source[n]]) : acc_t(0);
    }
    return values;
  }

  __device__ void store(acc_t* window, const Values& values) const {
#pragma unroll
    for (int n = 0; n < kPerThread; ++n) {
      const int entry = threadIdx.x + n * kTileThreads;
      if (entry < kEntries) window[entry] = values.entry[n];
    }
  }

  // Calls use(c, window) for each channel c in [first, last) of planes (C, H, W), window
  // holding that channel's values in shared memory. Channels alternate between the two
  // buffers of windows, so one barrier per channel suffices, and the next channel's global
  // reads overlap use's arithmetic on this one.
  template <typename Use>
  __device__ void for_each_channel(const scalar_t* planes, int64_t plane, int64_t first,
                                   int64_t last, acc_t (*windows)[kEntries], Use use) const {
    Values next = fetch(planes + first * plane);
    for (int64_t c = first; c < last; ++c) {
      acc_t* window = windows[c & 1];
      store(window, next);
      __syncthreads();
      if (c + 1 < last) next = fetch(planes + (c + 1) * plane);
      use(c, window);
    }
  }
};

// out[b, c, y, x] = sum_p kernel[b, p, y, x] * values~[b, c, y + i - r, x + j - r]
template <typename scalar_t, int K>
__global__ void __launch_bounds__(kTileThreads)
    window_aggregate_tiled_kernel(const scalar_t* __restrict__ kernel,
                                  const scalar_t* __restrict__ values,
                                  scalar_t* __restrict__ out, int64_t channels, WindowGeometry g,
                                  TileGrid grid) {
  using acc_t = at::opmath_type<scalar_t>;
  using Window = TileWindow<scalar_t, acc_t, K>;
  __shared__ acc_t windows[2][Window::kEntries];
  const TilePixel pos(grid, g);
  const int64_t plane = g.plane();

  acc_t weight[K * K];
  const scalar_t* kernel_n = kernel + pos.n * K * K * plane + pos.pixel;
#pragma unroll
  for (int p = 0; p < K * K; ++p) weight[p] = pos.inside ? acc_t(kernel_n[p * plane]) : acc_t(0);

  const int64_t first = blockIdx.y * grid.channels_per_block;
  const int64_t last = min(channels, first + grid.channels_per_block);
  scalar_t* out_n = out + pos.n * channels * plane + pos.pixel;
  Window(g, pos.y0, pos.x0).for_each_channel(
      values + pos.n * channels * plane, plane, first, last, windows,
      [&](int64_t c, const acc_t* window) {
        acc_t sum = acc_t(0);
#pragma unroll
        for (int i = 0; i < K; ++i) {
#pragma unroll
          for (int j = 0; j < K; ++j) {
            sum += weight[i * K + j] * window[(pos.ty + i) * Window::kWidth + pos.tx + j];
          }
        }
        if (pos.inside) out_n[c * plane] = static_cast<scalar_t>(sum);
      });
}

// partial[blockIdx.y, b, p, y, x] = sum_c a[b, c, y, x] * b~[b, c, y + i - r, x + j - r]
// over the block's channel range, in opmath precision.
template <typename scalar_t, int K>
__global__ void __launch_bounds__(kTileThreads)
    window_correlate_tiled_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                  at::opmath_type<scalar_t>* __restrict__ partial,
                                  int64_t channels, WindowGeometry g, TileGrid grid) {
  using acc_t = at::opmath_type<scalar_t>;
  using Window = TileWindow<scalar_t, acc_t, K>;
  __shared__ acc_t windows[2][Window::kEntries];
  const TilePixel pos(grid, g);
  const int64_t plane = g.plane();

  acc_t sum[K * K];
#pragma unroll
  for (int p = 0; p < K * K; ++p) sum[p] = acc_t(0);
  const int64_t first = blockIdx.y * grid.channels_per_block;
  const int64_t last = min(channels, first + grid.channels_per_block);
  const scalar_t* a_n = a + pos.n * channels * plane + pos.pixel;
  Window(g, pos.y0, pos.x0).for_each_channel(
      b + pos.n * channels * plane, plane, first, last, windows,
      [&](int64_t c, const acc_t* window) {
        const acc_t a_value = pos.inside ? acc_t(a_n[c * plane]) : acc_t(0);
#pragma unroll
        for (int i = 0; i < K; ++i) {
#pragma unroll
          for (int j = 0; j < K; ++j) {
            sum[i * K + j] += a_value * window[(pos.ty + i) * Window::kWidth + pos.tx + j];
          }
        }
      });
  if (!pos.inside) return;
  const int64_t batch = gridDim.x / grid.tiles_per_map;
  acc_t* partial_n = partial + ((blockIdx.y * batch + pos.n) * K * K) * plane + pos.pixel;
#pragma unroll
  for (int p = 0; p < K * K; ++p) partial_n[p * plane] = sum[p];
}

// out (B, k*k, H, W) = window_zero_padded_tap for every tap of the tile's pixels. The tap
// loop stays rolled: the kernel is bound by memory, and unrolled copies of the border
// path would multiply compile time.
template <typename scalar_t>
__global__ void __launch_bounds__(kTileThreads)
    window_zero_padded_kernel_tiled_kernel(const scalar_t* __restrict__ kernel,
                                           scalar_t* __restrict__ out, WindowGeometry g,
                                           TileGrid grid, bool forward, bool adjoint) {
  using acc_t = at::opmath_type<scalar_t>;
  const TilePixel pos(grid, g);
  if (!pos.inside) return;
  const int k = static_cast<int>(g.size()), taps = k * k;
  const int64_t plane = g.plane();
  const scalar_t* kernel_n = kernel + pos.n * taps * plane;
  scalar_t* out_n = out + pos.n * taps * plane + pos.pixel;
#pragma unroll 1
  for (int p = 0; p < taps; ++p) {
    out_n[p * plane] = static_cast<scalar_t>(window_zero_padded_tap<scalar_t, acc_t>(
        kernel_n, g, forward, adjoint, pos.y, pos.x, p / k, p % k));
  }
}

}  // namespace featup_mmseg
