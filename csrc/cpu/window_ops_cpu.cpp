// CPU launchers of the window ops.
//
// Work is split over output rows (b, y) with at::parallel_for, so threads never write the
// same memory. Within a row, borders are resolved once per source row into a scratch row
// of W + 2r values (never a padded copy of the input), after which every tap is one
// full-width multiply-accumulate loop that the compiler vectorises. Gradients gather
// into an extended row of W + 2r values that is folded back through the border mapping.
// Half types accumulate in float (at::opmath_type). The float and double paths are
// compiled for AVX-512 and AVX2 + FMA as well, and the loader picks the widest the CPU has.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../window_ops.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
// x86-64-v3 is AVX2 + FMA (plain "avx2" does not imply FMA), x86-64-v4 adds AVX-512.
#define FEATUP_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__)
// Compilers without the x86-64 level names: one ISA extension per clone, so no FMA.
#define FEATUP_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FEATUP_SIMD_CLONES
#endif
// Inlined into each SIMD clone, so the loops are vectorised for that clone's target.
#define FEATUP_INLINE inline __attribute__((always_inline))

namespace featup_mmseg {
namespace {

// acc[x] += a[x] * b[x] for x in [0, n)
template <typename acc_t, typename a_t, typename b_t>
FEATUP_INLINE void multiply_accumulate(acc_t* __restrict__ acc, const a_t* __restrict__ a,
                                       const b_t* __restrict__ b, int64_t n) {
  for (int64_t x = 0; x < n; ++x) acc[x] += acc_t(a[x]) * acc_t(b[x]);
}

// acc[x] += sum_j taps[j * W + x] * pad[x + j], j < K, x < W: one row i of the window.
// With K known at compile time each acc[x] is loaded and stored once per row, not once per
// tap (about 25% faster than tap by tap at k = 7). The same trick does not pay for the
// transposed and outer-product loops of the other ops, which stay tap by tap.
template <int K, typename acc_t>
FEATUP_INLINE void window_row_dot(acc_t* __restrict__ acc, const acc_t* __restrict__ taps,
                                  const acc_t* __restrict__ pad, int64_t width) {
  for (int64_t x = 0; x < width; ++x) {
    acc_t sum = acc[x];
#pragma GCC unroll 16
    for (int j = 0; j < K; ++j) sum += taps[j * width + x] * pad[x + j];
    acc[x] = sum;
  }
}

template <typename acc_t>
FEATUP_INLINE void window_row_dot(acc_t* acc, const acc_t* taps, const acc_t* pad, int64_t width,
                                  int64_t k) {
  switch (k) {
    case 3: return window_row_dot<3>(acc, taps, pad, width);
    case 5: return window_row_dot<5>(acc, taps, pad, width);
    case 7: return window_row_dot<7>(acc, taps, pad, width);
    default:
      for (int64_t j = 0; j < k; ++j) multiply_accumulate(acc, taps + j * width, pad + j, width);
  }
}

template <typename dst_t, typename src_t>
FEATUP_INLINE void copy_row(dst_t* __restrict__ dst, const src_t* __restrict__ src, int64_t n) {
  for (int64_t x = 0; x < n; ++x) dst[x] = static_cast<dst_t>(src[x]);
}

// pad[t + r] = row~[t] for t in [-r, W + r): one source row with its borders resolved.
template <typename acc_t, typename scalar_t>
FEATUP_INLINE void load_padded_row(acc_t* __restrict__ pad, const scalar_t* __restrict__ row,
                                   const WindowGeometry& g) {
  const int64_t r = g.radius, width = g.width;
  copy_row(pad + r, row, width);
  for (int64_t t = 1; t <= r; ++t) {
    const int64_t left = border_index(-t, width, g.mode);
    const int64_t right = border_index(width - 1 + t, width, g.mode);
    pad[r - t] = left < 0 ? acc_t(0) : acc_t(row[left]);
    pad[width - 1 + r + t] = right < 0 ? acc_t(0) : acc_t(row[right]);
  }
}

// The adjoint of load_padded_row: acc[border_index(t)] += ext[t + r] for t in [-r, W + r).
template <typename acc_t>
FEATUP_INLINE void fold_padded_row(acc_t* __restrict__ acc, const acc_t* __restrict__ ext,
                                   const WindowGeometry& g) {
  const int64_t r = g.radius, width = g.width;
  for (int64_t x = 0; x < width; ++x) acc[x] += ext[x + r];
  for (int64_t t = 1; t <= r; ++t) {
    const int64_t left = border_index(-t, width, g.mode);
    const int64_t right = border_index(width - 1 + t, width, g.mode);
    if (left >= 0) acc[left] += ext[r - t];
    if (right >= 0) acc[right] += ext[width - 1 + r + t];
  }
}

// The k*k rows of a (k*k, H, W) kernel plane stack are H*W elements apart, which at
// power-of-two sizes maps them onto the same L1 sets. Each output row therefore first
// gathers the kernel rows it needs into contiguous scratch, reused for every channel.

// tap_rows[p * W + x] = kernel[p, y, x]: the kernel rows of output row y.
template <typename acc_t, typename scalar_t>
FEATUP_INLINE void gather_tap_rows(acc_t* tap_rows, const scalar_t* kernel,
                                   const WindowGeometry& g, int64_t y) {
  for (int64_t p = 0; p < g.taps(); ++p) {
    copy_row(tap_rows + p * g.width, kernel + p * g.plane() + y * g.width, g.width);
  }
}

// The (y, i) whose tap row i lands on output row ys once borders are resolved (the
// preimage of ys), with tap_rows[(q * k + j) * W + x] = kernel[i_q * k + j, y_q, x].
template <typename acc_t, typename scalar_t>
FEATUP_INLINE void gather_adjoint_tap_rows(std::vector<int64_t>& source_rows,
                                           std::vector<acc_t>& tap_rows,
                                           const scalar_t* kernel, const WindowGeometry& g,
                                           int64_t ys) {
  const int64_t k = g.size(), r = g.radius, width = g.width;
  const WindowPreimage rows = window_preimage(ys, g.height, r, g.mode);
  source_rows.clear();
  tap_rows.clear();
  for (int rr = 0; rr < rows.count; ++rr) {
    for (int64_t t = rows.first[rr]; t <= rows.last[rr]; ++t) {
      for (int64_t i = 0; i < k; ++i) {
        const int64_t y = t - i + r;
        if (y < 0 || y >= g.height) continue;
        source_rows.push_back(y);
        tap_rows.resize(tap_rows.size() + k * width);
        for (int64_t j = 0; j < k; ++j) {
          copy_row(tap_rows.data() + tap_rows.size() - (k - j) * width,
                   kernel + (i * k + j) * g.plane() + y * width, width);
        }
      }
    }
  }
}

// acc[x] += sum_p tap_rows[p, x] * values~[y + i - r, x + j - r] for one output row y.
template <typename scalar_t, typename acc_t>
FEATUP_INLINE void aggregate_row(acc_t* acc, acc_t* pad, const acc_t* tap_rows,
                                 const scalar_t* values, const WindowGeometry& g, int64_t y) {
  const int64_t k = g.size(), width = g.width;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t sy = border_index(y + i - g.radius, g.height, g.mode);
    if (sy < 0) continue;
    load_padded_row(pad, values + sy * width, g);
    window_row_dot(acc, tap_rows + i * k * width, pad, width, k);
  }
}

// ext[t + r] += the adjoint of aggregate_row for one output row, before its columns are
// folded back through the border (fold_padded_row); source_rows and tap_rows come from
// gather_adjoint_tap_rows.
template <typename scalar_t, typename acc_t>
FEATUP_INLINE void aggregate_adjoint_row(acc_t* ext, const std::vector<int64_t>& source_rows,
                                         const acc_t* tap_rows, const scalar_t* a,
                                         const WindowGeometry& g) {
  const int64_t k = g.size(), width = g.width;
  for (size_t q = 0; q < source_rows.size(); ++q) {
    const scalar_t* a_row = a + source_rows[q] * width;
    for (int64_t j = 0; j < k; ++j) {
      // tap j of column x lands on window column x + j - r, stored at ext[x + j]
      multiply_accumulate(ext + j, tap_rows + (q * k + j) * width, a_row, width);
    }
  }
}

// acc[p * W + x] += sum_c a[c, y, x] * b~[c, y + i - r, x + j - r] for one row y.
template <typename scalar_t, typename acc_t>
FEATUP_INLINE void correlate_row(acc_t* acc, acc_t* pad, const scalar_t* a, const scalar_t* b,
                                 int64_t channels, const WindowGeometry& g, int64_t y) {
  const int64_t k = g.size(), plane = g.plane(), width = g.width;
  for (int64_t c = 0; c < channels; ++c) {
    const scalar_t* a_row = a + c * plane + y * width;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t sy = border_index(y + i - g.radius, g.height, g.mode);
      if (sy < 0) continue;
      load_padded_row(pad, b + c * plane + sy * width, g);
      for (int64_t j = 0; j < k; ++j) {
        multiply_accumulate(acc + (i * k + j) * width, a_row, pad + j, width);
      }
    }
  }
}

// Operands of one launch, contiguous (B, *, H, W); each *_rows function says which is which.
template <typename scalar_t>
struct WindowArgs {
  const scalar_t* lhs;
  const scalar_t* rhs;
  scalar_t* out;
  int64_t channels;
  WindowGeometry g;
};

// Each *_rows function computes output rows [begin, end) of (B * H) of one op.

// out (B, C, H, W) from lhs (B, k*k, H, W) and rhs (B, C, H, W), summing
//   kAggregate: the aggregate of lhs = kernel over rhs = values (adaptive_conv), and
//   kAdjoint:   the aggregate adjoint of lhs = kernel applied to rhs (its features gradient).
// Both together give the gradient of window_correlation(rhs) for lhs = the logits gradient.
template <typename scalar_t, typename acc_t, bool kAggregate, bool kAdjoint>
FEATUP_INLINE void channel_rows(const WindowArgs<scalar_t>& args, int64_t begin, int64_t end) {
  const WindowGeometry& g = args.g;
  const int64_t plane = g.plane(), channels = args.channels;
  std::vector<acc_t> acc(g.width), pad(g.width + 2 * g.radius), ext(g.width + 2 * g.radius);
  std::vector<acc_t> tap_rows(kAggregate ? g.taps() * g.width : 0), adjoint_tap_rows;
  std::vector<int64_t> source_rows;
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, y = index % g.height;
    const scalar_t* kernel = args.lhs + n * g.taps() * plane;
    if constexpr (kAggregate) gather_tap_rows(tap_rows.data(), kernel, g, y);
    if constexpr (kAdjoint) gather_adjoint_tap_rows(source_rows, adjoint_tap_rows, kernel, g, y);
    for (int64_t c = 0; c < channels; ++c) {
      const scalar_t* rhs = args.rhs + (n * channels + c) * plane;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      if constexpr (kAggregate) aggregate_row(acc.data(), pad.data(), tap_rows.data(), rhs, g, y);
      if constexpr (kAdjoint) {
        std::fill(ext.begin(), ext.end(), acc_t(0));
        aggregate_adjoint_row(ext.data(), source_rows, adjoint_tap_rows.data(), rhs, g);
        fold_padded_row(acc.data(), ext.data(), g);
      }
      copy_row(args.out + (n * channels + c) * plane + y * g.width, acc.data(), g.width);
    }
  }
}

template <typename scalar_t, typename acc_t>
FEATUP_INLINE void aggregate_rows(const WindowArgs<scalar_t>& args, int64_t begin, int64_t end) {
  channel_rows<scalar_t, acc_t, true, false>(args, begin, end);
}

template <typename scalar_t, typename acc_t>
FEATUP_INLINE void aggregate_adjoint_rows(const WindowArgs<scalar_t>& args, int64_t begin,
                                          int64_t end) {
  channel_rows<scalar_t, acc_t, false, true>(args, begin, end);
}

template <typename scalar_t, typename acc_t>
FEATUP_INLINE void correlation_backward_rows(const WindowArgs<scalar_t>& args, int64_t begin,
                                             int64_t end) {
  channel_rows<scalar_t, acc_t, true, true>(args, begin, end);
}

// out (B, k*k, H, W) = correlation of lhs = a (B, C, H, W) with the windows of rhs = b.
template <typename scalar_t, typename acc_t>
FEATUP_INLINE void correlate_rows(const WindowArgs<scalar_t>& args, int64_t begin, int64_t end) {
  const WindowGeometry& g = args.g;
  const int64_t plane = g.plane(), taps = g.taps(), channels = args.channels;
  std::vector<acc_t> acc(taps * g.width), pad(g.width + 2 * g.radius);
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, y = index % g.height;
    std::fill(acc.begin(), acc.end(), acc_t(0));
    correlate_row(acc.data(), pad.data(), args.lhs + n * channels * plane,
                  args.rhs + n * channels * plane, channels, g, y);
    for (int64_t p = 0; p < taps; ++p) {
      copy_row(args.out + (n * taps + p) * plane + y * g.width, acc.data() + p * g.width,
               g.width);
    }
  }
}

// name##_simd(args, begin, end): float and double through SIMD clones, half types through
// the default build.
#define FEATUP_DEFINE_SIMD_ROWS(name)                                                   \
  FEATUP_SIMD_CLONES void name##_simd(const WindowArgs<float>& args, int64_t begin,    \
                                      int64_t end) {                                   \
    name<float, float>(args, begin, end);                                              \
  }                                                                                    \
  FEATUP_SIMD_CLONES void name##_simd(const WindowArgs<double>& args, int64_t begin,   \
                                      int64_t end) {                                   \
    name<double, double>(args, begin, end);                                            \
  }                                                                                    \
  template <typename scalar_t>                                                         \
  void name##_simd(const WindowArgs<scalar_t>& args, int64_t begin, int64_t end) {     \
    name<scalar_t, at::opmath_type<scalar_t>>(args, begin, end);                       \
  }

FEATUP_DEFINE_SIMD_ROWS(aggregate_rows)
FEATUP_DEFINE_SIMD_ROWS(aggregate_adjoint_rows)
FEATUP_DEFINE_SIMD_ROWS(correlation_backward_rows)
FEATUP_DEFINE_SIMD_ROWS(correlate_rows)

// Runs rows(args, begin, end) over all B * H output rows in parallel; row_cost, the
// multiply-adds per row, keeps tiny problems on one thread.
#define FEATUP_LAUNCH_ROWS(rows, lhs_tensor, rhs_tensor, out_tensor, channels_, g_, row_cost) \
  AT_DISPATCH_FLOATING_TYPES_AND2(                                                        \
      at::kHalf, at::kBFloat16, (rhs_tensor).scalar_type(), #rows, [&] {                  \
        const WindowArgs<scalar_t> args{(lhs_tensor).const_data_ptr<scalar_t>(),          \
                                        (rhs_tensor).const_data_ptr<scalar_t>(),          \
                                        (out_tensor).mutable_data_ptr<scalar_t>(),        \
                                        channels_, g_};                                   \
        constexpr int64_t kMinTaskCost = int64_t(1) << 15;                                \
        const int64_t grain = std::max<int64_t>(1, kMinTaskCost / std::max<int64_t>(row_cost, 1)); \
        at::parallel_for(0, (rhs_tensor).size(0) * (g_).height, grain,                 \
                         [&](int64_t begin, int64_t end) { rows##_simd(args, begin, end); }); \
      })

}  // namespace

void window_correlate_cpu(const at::Tensor& a, const at::Tensor& b, at::Tensor& out,
                          const WindowGeometry& g) {
  FEATUP_LAUNCH_ROWS(correlate_rows, a, b, out, a.size(1), g, a.size(1) * g.taps() * g.width);
}

void window_aggregate_cpu(const at::Tensor& kernel, const at::Tensor& values, at::Tensor& out,
                          const WindowGeometry& g) {
  FEATUP_LAUNCH_ROWS(aggregate_rows, kernel, values, out, values.size(1), g,
                     values.size(1) * g.taps() * g.width);
}

void window_aggregate_adjoint_cpu(const at::Tensor& kernel, const at::Tensor& a,
                                  at::Tensor& out, const WindowGeometry& g) {
  FEATUP_LAUNCH_ROWS(aggregate_adjoint_rows, kernel, a, out, a.size(1), g,
                     a.size(1) * g.taps() * g.width);
}

void window_correlation_backward_cpu(const at::Tensor& grad, const at::Tensor& keys,
                                     at::Tensor& out, const WindowGeometry& g) {
  FEATUP_LAUNCH_ROWS(correlation_backward_rows, grad, keys, out, keys.size(1), g,
                     2 * keys.size(1) * g.taps() * g.width);
}

}  // namespace featup_mmseg
