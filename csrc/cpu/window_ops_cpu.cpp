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
#include <type_traits>
#include <vector>

#include "../window_ops.h"
#include "simd_clones.h"

namespace featup_mmseg {
namespace {

// 64-byte vectors of the accumulation type for the register-blocked loops below. GCC and
// Clang lower them to whatever the SIMD clone targets (one AVX-512 register, two AVX2 or
// four SSE registers), so one source serves every clone.
#if defined(__GNUC__)
#define FEATUP_VECTOR_LOOPS 1
// The helpers returning vectors are always inlined into the clones: no call crosses an ABI.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float float_vec __attribute__((vector_size(64)));
typedef float float_vec_unaligned __attribute__((vector_size(64), aligned(4), may_alias));
typedef double double_vec __attribute__((vector_size(64)));
typedef double double_vec_unaligned __attribute__((vector_size(64), aligned(8), may_alias));

template <typename acc_t>
struct Simd;
template <>
struct Simd<float> {
  using vec = float_vec;
  using unaligned = float_vec_unaligned;
};
template <>
struct Simd<double> {
  using vec = double_vec;
  using unaligned = double_vec_unaligned;
};
template <typename acc_t>
constexpr int kLanes = int(64 / sizeof(acc_t));

template <typename acc_t>
FEATUP_INLINE typename Simd<acc_t>::vec load_vec(const acc_t* p) {
  return *reinterpret_cast<const typename Simd<acc_t>::unaligned*>(p);
}
template <typename acc_t>
FEATUP_INLINE void store_vec(acc_t* p, typename Simd<acc_t>::vec v) {
  *reinterpret_cast<typename Simd<acc_t>::unaligned*>(p) = v;
}
#else
#define FEATUP_VECTOR_LOOPS 0
#endif


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

// dst[x] += src[x] for x in [0, n), summed in src's (the accumulation) type
template <typename dst_t, typename src_t>
FEATUP_INLINE void add_row(dst_t* __restrict__ dst, const src_t* __restrict__ src, int64_t n) {
  for (int64_t x = 0; x < n; ++x) dst[x] = static_cast<dst_t>(src_t(dst[x]) + src[x]);
}

// pad[p] = row~[p - r] for p in [from, to): part of one source row with its borders
// resolved (pad has W + 2r entries).
template <typename acc_t, typename scalar_t>
FEATUP_INLINE void load_padded_range(acc_t* __restrict__ pad, const scalar_t* __restrict__ row,
                                     const WindowGeometry& g, int64_t from, int64_t to) {
  const int64_t r = g.radius, width = g.width;
  const int64_t inside_from = std::min(std::max(from, r), to);
  const int64_t inside_to = std::max(std::min(to, width + r), inside_from);
  const auto border = [&](int64_t p) {
    const int64_t source = border_index(p - r, width, g.mode);
    pad[p] = source < 0 ? acc_t(0) : acc_t(row[source]);
  };
  for (int64_t p = from; p < inside_from; ++p) border(p);
  copy_row(pad + inside_from, row + inside_from - r, inside_to - inside_from);
  for (int64_t p = inside_to; p < to; ++p) border(p);
}

// The whole padded row: pad[t + r] = row~[t] for t in [-r, W + r).
template <typename acc_t, typename scalar_t>
FEATUP_INLINE void load_padded_row(acc_t* __restrict__ pad, const scalar_t* __restrict__ row,
                                   const WindowGeometry& g) {
  load_padded_range(pad, row, g, 0, g.width + 2 * g.radius);
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

// tap_rows[p * S + x] = kernel[p, y, x]: the kernel rows of output row y, S = stride >= W
// apart (0 for W).
template <typename acc_t, typename scalar_t>
FEATUP_INLINE void gather_tap_rows(acc_t* tap_rows, const scalar_t* kernel,
                                   const WindowGeometry& g, int64_t y, int64_t stride = 0) {
  if (stride == 0) stride = g.width;
  for (int64_t p = 0; p < g.taps(); ++p) {
    copy_row(tap_rows + p * stride, kernel + p * g.plane() + y * g.width, g.width);
  }
}

// The (y, i) whose tap row i lands on output row ys once borders are resolved (the
// preimage of ys), with tap_rows[(q * k + j) * stride + offset + x] = kernel[i_q * k + j,
// y_q, x] (stride >= offset + W, 0 for W). tap_rows is resized (and zeroed) only when the
// number of rows changes: the entries outside [offset, offset + W) of each row keep what
// they held, zeros for the blocked adjoint's padding.
template <typename acc_t, typename scalar_t>
FEATUP_INLINE void gather_adjoint_tap_rows(std::vector<int64_t>& source_rows,
                                           std::vector<acc_t>& tap_rows,
                                           const scalar_t* kernel, const WindowGeometry& g,
                                           int64_t ys, int64_t stride = 0, int64_t offset = 0) {
  const int64_t k = g.size(), r = g.radius, width = g.width;
  if (stride == 0) stride = width;
  const WindowPreimage rows = window_preimage(ys, g.height, r, g.mode);
  const auto for_each_source_row = [&](auto&& f) {
    for (int rr = 0; rr < rows.count; ++rr) {
      for (int64_t t = rows.first[rr]; t <= rows.last[rr]; ++t) {
        for (int64_t i = 0; i < k; ++i) {
          const int64_t y = t - i + r;
          if (y >= 0 && y < g.height) f(y, i);
        }
      }
    }
  };
  source_rows.clear();
  for_each_source_row([&](int64_t y, int64_t) { source_rows.push_back(y); });
  const size_t size = source_rows.size() * k * stride;
  if (tap_rows.size() != size) tap_rows.assign(size, acc_t(0));
  acc_t* row = tap_rows.data() + offset;
  for_each_source_row([&](int64_t y, int64_t i) {
    for (int64_t j = 0; j < k; ++j, row += stride) {
      copy_row(row, kernel + (i * k + j) * g.plane() + y * width, width);
    }
  });
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
  // the correlation adds its result to out (the other ops ignore it)
  bool accumulate;
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

#if FEATUP_VECTOR_LOOPS
// Register-blocked forms of the three ops that dominate a JBU stage's training step (for
// window sizes 3, 5 and 7): each loads a vector once for several multiply-adds, and keeps
// its sums in registers for a whole window (aggregate, adjoint) or all channels
// (correlate), where the tap-by-tap loops above load and store a sum per tap. The terms
// are added in the same order, so the results are the same.

// Channels aggregated together: every tap row loaded serves all of them.
constexpr int kChannelBlock = 4;

// out[x] = v[x] for the first n <= V lanes
template <typename scalar_t, typename acc_t>
FEATUP_INLINE void store_lanes(scalar_t* out, typename Simd<acc_t>::vec v,
                               int64_t n = kLanes<acc_t>) {
  if constexpr (std::is_same<scalar_t, acc_t>::value) {
    if (n == kLanes<acc_t>) return store_vec(out, v);
  }
  acc_t lanes[kLanes<acc_t>];
  store_vec(lanes, v);
  copy_row(out, lanes, n);
}

// out[x] += v[x] for the first n <= V lanes, summed in the accumulation type
template <typename scalar_t, typename acc_t>
FEATUP_INLINE void add_lanes(scalar_t* out, typename Simd<acc_t>::vec v,
                             int64_t n = kLanes<acc_t>) {
  if constexpr (std::is_same<scalar_t, acc_t>::value) {
    if (n == kLanes<acc_t>) return store_vec(out, load_vec(out) + v);
  }
  acc_t lanes[kLanes<acc_t>];
  store_vec(lanes, v);
  add_row(out, lanes, n);
}

// x rounded up to a multiple of the vector width: the stride of scratch rows that partial
// vectors read beyond their end (zeros there)
template <typename acc_t>
constexpr int64_t vector_stride(int64_t x) {
  return (x + kLanes<acc_t> - 1) / kLanes<acc_t> * kLanes<acc_t>;
}

// out[c][x] = sum_{i, j} taps[(i * K + j) * S + x] * rows[c * K + i][x + j - r] for CB
// channels c of one output row: the aggregate, with rows[c * K + i][t] = values~[c,
// y + i - r, t] and tap rows S = vector_stride(W) apart. Two versions of each row:
// `direct` is the source row itself, read by the vectors that stay inside it; `padded` has
// the borders resolved (from index -r) and is read (and filled) only where vectors reach
// beyond them, sparing most of the copying. The last vector, partial where W is not a
// multiple of V, reads zeros beyond the padded rows and the tap rows and stores its lanes
// inside the row.
template <int K, int CB, typename scalar_t, typename acc_t>
FEATUP_INLINE void aggregate_channel_block(scalar_t* const* out, const acc_t* taps,
                                           const acc_t* const* direct,
                                           const acc_t* const* padded, int64_t width) {
  using vec = typename Simd<acc_t>::vec;
  constexpr int V = kLanes<acc_t>, r = K / 2;
  const int64_t stride = vector_stride<acc_t>(width);
  for (int64_t x0 = 0; x0 < width; x0 += V) {
    const acc_t* const* rows = x0 >= r && x0 + V + r <= width ? direct : padded;
    vec acc[CB] = {};
    for (int i = 0; i < K; ++i) {
#pragma GCC unroll 7
      for (int j = 0; j < K; ++j) {
        const vec tap = load_vec(taps + (i * K + j) * stride + x0);
#pragma GCC unroll 4
        for (int c = 0; c < CB; ++c) acc[c] += tap * load_vec(rows[c * K + i] + x0 + j - r);
      }
    }
    const int64_t lanes = std::min<int64_t>(V, width - x0);
    for (int c = 0; c < CB; ++c) store_lanes<scalar_t, acc_t>(out[c] + x0, acc[c], lanes);
  }
}

// The first column of the vectors (the partial last one too) of the blocked loops that reach
// beyond the right border by `reach` columns: the padded rows are filled from there on.
template <typename acc_t>
FEATUP_INLINE int64_t first_border_vector(int64_t width, int64_t reach) {
  constexpr int V = kLanes<acc_t>;
  int64_t x0 = 0;
  while (x0 + V + reach <= width) x0 += V;
  return x0;
}

template <int K, typename scalar_t, typename acc_t>
FEATUP_INLINE void aggregate_rows_blocked(const WindowArgs<scalar_t>& args, int64_t begin,
                                          int64_t end) {
  const WindowGeometry& g = args.g;
  const int64_t plane = g.plane(), width = g.width, padded_width = width + K - 1;
  const int64_t channels = args.channels;
  constexpr bool kDirect = std::is_same<scalar_t, acc_t>::value;
  // the padded entries the border vectors read: the first vector's and from the right ones'
  const int64_t left_to = std::min<int64_t>(kLanes<acc_t> + K - 1, padded_width);
  const int64_t right_from = kDirect ? first_border_vector<acc_t>(width, K / 2) : 0;
  // tap rows and padded rows with room (zeros) for the last vector to read a whole one
  const int64_t taps_stride = vector_stride<acc_t>(width), pad_stride = taps_stride + K - 1;
  std::vector<acc_t> tap_rows(K * K * taps_stride), pads(kChannelBlock * K * pad_stride);
  std::vector<acc_t> zeros(pad_stride, acc_t(0));
  scalar_t* out[kChannelBlock];
  const acc_t* direct[kChannelBlock * K];
  const acc_t* padded[kChannelBlock * K];
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, y = index % g.height;
    gather_tap_rows(tap_rows.data(), args.lhs + n * K * K * plane, g, y, taps_stride);
    for (int64_t c0 = 0; c0 < channels;) {
      const int block = channels - c0 >= kChannelBlock ? kChannelBlock : 1;
      for (int c = 0; c < block; ++c) {
        const int64_t offset = (n * channels + c0 + c) * plane;
        out[c] = args.out + offset + y * width;
        for (int i = 0; i < K; ++i) {
          const int64_t sy = border_index(y + i - g.radius, g.height, g.mode);
          acc_t* pad = pads.data() + (c * K + i) * pad_stride;
          padded[c * K + i] = direct[c * K + i] = pad + g.radius;
          if (sy < 0) {
            padded[c * K + i] = direct[c * K + i] = zeros.data() + g.radius;
          } else if constexpr (kDirect) {
            const scalar_t* row = args.rhs + offset + sy * width;
            direct[c * K + i] = row;
            load_padded_range(pad, row, g, 0, std::min(left_to, right_from));
            load_padded_range(pad, row, g, right_from, padded_width);
          } else {
            load_padded_row(pad, args.rhs + offset + sy * width, g);
          }
        }
      }
      if (block == kChannelBlock) {
        aggregate_channel_block<K, kChannelBlock>(out, tap_rows.data(), direct, padded, width);
      } else {
        aggregate_channel_block<K, 1>(out, tap_rows.data(), direct, padded, width);
      }
      c0 += block;
    }
  }
}

// acc[c] = sum_q sum_j taps[q * K + j][t - j] * rows[c * count + q][t - j] for the V
// window columns t - r, t in [t0, t0 + V), of CB channels of one source row: the
// aggregate's adjoint there, before the border fold. The tap rows are stored from index
// K - 1 of rows `taps_width` apart, zero outside [0, W); rows[..][x] = a[c, row q, x],
// zero outside the row, is read for x in [t0 - K + 1, t0 + V).
template <int K, int CB, typename acc_t>
FEATUP_INLINE void adjoint_lanes(typename Simd<acc_t>::vec* acc, const acc_t* taps,
                                 const acc_t* const* rows, int64_t count, int64_t taps_width,
                                 int64_t t0) {
  using vec = typename Simd<acc_t>::vec;
  for (int c = 0; c < CB; ++c) acc[c] = vec{};
  for (int64_t q = 0; q < count; ++q) {
#pragma GCC unroll 7
    for (int j = 0; j < K; ++j) {
      const vec tap = load_vec(taps + (q * K + j) * taps_width + t0 + K - 1 - j);
#pragma GCC unroll 4
      for (int c = 0; c < CB; ++c) acc[c] += tap * load_vec(rows[c * count + q] + t0 - j);
    }
  }
}

// dst[c][x] (+)= the aggregate's adjoint at x for CB channels of one source row, borders
// folded in: vectors over the W inner window columns, stored straight into dst (the last
// one partly), and one vector on either side for the r columns beyond each border, folded
// back through border_index. As in aggregate_channel_block, `direct` rows are the source
// rows themselves, read by the vectors inside them, and `padded` rows copies padded with
// zeros (K - 1 before the row, K - 1 + V after) for the others. kAccumulate adds to dst.
template <int K, int CB, bool kAccumulate, typename acc_t>
FEATUP_INLINE void aggregate_adjoint_channel_block(acc_t* const* dst, const acc_t* taps,
                                                   const acc_t* const* direct,
                                                   const acc_t* const* padded, int64_t count,
                                                   int64_t taps_width, const WindowGeometry& g) {
  using vec = typename Simd<acc_t>::vec;
  constexpr int V = kLanes<acc_t>, r = K / 2;
  const int64_t width = g.width;
  vec acc[CB];
  for (int64_t x0 = 0; x0 < width; x0 += V) {
    const int64_t t0 = x0 + r;
    adjoint_lanes<K, CB>(acc, taps, t0 >= K - 1 && t0 + V <= width ? direct : padded, count,
                         taps_width, t0);
    const int64_t n = std::min<int64_t>(V, width - x0);
    for (int c = 0; c < CB; ++c) {
      if constexpr (kAccumulate) {
        add_lanes<acc_t, acc_t>(dst[c] + x0, acc[c], n);
      } else {
        store_lanes<acc_t, acc_t>(dst[c] + x0, acc[c], n);
      }
    }
  }
  // window columns -r..-1 (lanes 0..r-1 of t0 = 0) and W..W+r-1 (of t0 = W + r), added in
  // the order of fold_padded_row
  acc_t before[CB][V], beyond[CB][V];
  adjoint_lanes<K, CB>(acc, taps, padded, count, taps_width, 0);
  for (int c = 0; c < CB; ++c) store_vec(before[c], acc[c]);
  adjoint_lanes<K, CB>(acc, taps, padded, count, taps_width, width + r);
  for (int c = 0; c < CB; ++c) store_vec(beyond[c], acc[c]);
  for (int t = 1; t <= r; ++t) {
    const int64_t left = border_index(-t, width, g.mode);
    const int64_t right = border_index(width - 1 + t, width, g.mode);
    for (int c = 0; c < CB; ++c) {
      if (left >= 0) dst[c][left] += before[c][r - t];
      if (right >= 0) dst[c][right] += beyond[c][t - 1];
    }
  }
}

// out rows [begin, end) of the aggregate's adjoint; kAccumulate adds them to out (float and
// double only: half types would round what is there first).
template <int K, typename scalar_t, typename acc_t, bool kAccumulate = false>
FEATUP_INLINE void aggregate_adjoint_rows_blocked(const WindowArgs<scalar_t>& args,
                                                  int64_t begin, int64_t end) {
  constexpr bool kDirect = std::is_same<scalar_t, acc_t>::value;
  static_assert(kDirect || !kAccumulate, "accumulating needs out in the accumulation type");
  constexpr int V = kLanes<acc_t>, r = K / 2;
  const WindowGeometry& g = args.g;
  const int64_t plane = g.plane(), width = g.width, channels = args.channels;
  // rows and taps are stored from index K - 1, with zeros up to V + K - 1 beyond the row
  const int64_t padded_width = width + 2 * (K - 1) + V;
  // the row entries the padded vectors read: the left border's, the first inner one's
  // (x < V + r), and from the first inner one that reaches beyond the right border on
  const int64_t left = std::min<int64_t>(V + r, width);
  const int64_t right = kDirect ? std::max<int64_t>(
      std::min(first_border_vector<acc_t>(width, r) - r, width - r), 0) : 0;
  std::vector<int64_t> source_rows;
  std::vector<acc_t> padded_taps, a_rows, acc(kDirect ? 0 : kChannelBlock * width);
  std::vector<const acc_t*> direct, padded;
  acc_t* dst[kChannelBlock];
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, ys = index % g.height;
    gather_adjoint_tap_rows(source_rows, padded_taps, args.lhs + n * K * K * plane, g, ys,
                            padded_width, K - 1);
    const int64_t count = int64_t(source_rows.size());
    // zeroed when the layout changes only: the copies below never touch the padding
    if (a_rows.size() != size_t(kChannelBlock * count * padded_width)) {
      a_rows.assign(kChannelBlock * count * padded_width, acc_t(0));
    }
    direct.resize(kChannelBlock * count);
    padded.resize(kChannelBlock * count);
    for (int64_t c0 = 0; c0 < channels;) {
      const int block = channels - c0 >= kChannelBlock ? kChannelBlock : 1;
      for (int c = 0; c < block; ++c) {
        const int64_t offset = (n * channels + c0 + c) * plane;
        if constexpr (kDirect) {
          dst[c] = args.out + offset + ys * width;
        } else {
          dst[c] = acc.data() + c * width;
        }
        for (int64_t q = 0; q < count; ++q) {
          const scalar_t* row = args.rhs + offset + source_rows[q] * width;
          acc_t* copy = a_rows.data() + (c * count + q) * padded_width + K - 1;
          padded[c * count + q] = direct[c * count + q] = copy;
          if constexpr (kDirect) {
            direct[c * count + q] = row;
            copy_row(copy, row, left);
            copy_row(copy + right, row + right, width - right);
          } else {
            copy_row(copy, row, width);
          }
        }
      }
      if (block == kChannelBlock) {
        aggregate_adjoint_channel_block<K, kChannelBlock, kAccumulate>(
            dst, padded_taps.data(), direct.data(), padded.data(), count, padded_width, g);
      } else {
        aggregate_adjoint_channel_block<K, 1, kAccumulate>(
            dst, padded_taps.data(), direct.data(), padded.data(), count, padded_width, g);
      }
      if constexpr (!kDirect) {
        for (int c = 0; c < block; ++c) {
          copy_row(args.out + (n * channels + c0 + c) * plane + ys * width, dst[c], width);
        }
      }
      c0 += block;
    }
  }
}

// The gradient of window_correlation for rows [begin, end): the aggregate of lhs = the
// logits gradient over the keys, plus its adjoint, a few rows at a time (their sums stay
// in the caches between the two), added in the order of the tap-by-tap loops.
template <int K, typename scalar_t, typename acc_t>
FEATUP_INLINE void correlation_backward_rows_blocked(const WindowArgs<scalar_t>& args,
                                                     int64_t begin, int64_t end) {
  if constexpr (std::is_same<scalar_t, acc_t>::value) {
    constexpr int64_t kRows = 4;
    for (int64_t first = begin; first < end; first += kRows) {
      const int64_t last = std::min(first + kRows, end);
      aggregate_rows_blocked<K, scalar_t, acc_t>(args, first, last);
      aggregate_adjoint_rows_blocked<K, scalar_t, acc_t, true>(args, first, last);
    }
  } else {
    channel_rows<scalar_t, acc_t, true, true>(args, begin, end);
  }
}

// out[j][x] = sum_c a_rows[c][x] * pads[c][x + j] for j < K: the K taps of one window row
// of the correlation, summed over all channels in registers. The rows are S =
// vector_stride(W) (a_rows) and S + K - 1 (pads) apart, with zeros beyond W and W + K - 1,
// where the last vector, partial if W is not a multiple of V, reads. kAccumulate adds to out.
template <int K, bool kAccumulate, typename scalar_t, typename acc_t>
FEATUP_INLINE void correlate_window_row(scalar_t* out, int64_t out_stride, const acc_t* a_rows,
                                        const acc_t* pads, int64_t channels, int64_t width) {
  using vec = typename Simd<acc_t>::vec;
  constexpr int V = kLanes<acc_t>;
  const int64_t stride = vector_stride<acc_t>(width), padded = stride + K - 1;
  for (int64_t x0 = 0; x0 < width; x0 += V) {
    vec acc[K] = {};
    for (int64_t c = 0; c < channels; ++c) {
      const vec a = load_vec(a_rows + c * stride + x0);
#pragma GCC unroll 7
      for (int j = 0; j < K; ++j) acc[j] += a * load_vec(pads + c * padded + x0 + j);
    }
    const int64_t lanes = std::min<int64_t>(V, width - x0);
    for (int j = 0; j < K; ++j) {
      if constexpr (kAccumulate) {
        add_lanes<scalar_t, acc_t>(out + j * out_stride + x0, acc[j], lanes);
      } else {
        store_lanes<scalar_t, acc_t>(out + j * out_stride + x0, acc[j], lanes);
      }
    }
  }
}

template <int K, typename scalar_t, typename acc_t>
FEATUP_INLINE void correlate_rows_blocked(const WindowArgs<scalar_t>& args, int64_t begin,
                                          int64_t end) {
  const WindowGeometry& g = args.g;
  const int64_t plane = g.plane(), width = g.width, stride = vector_stride<acc_t>(width);
  const int64_t padded = stride + K - 1, channels = args.channels;
  std::vector<acc_t> a_rows(channels * stride), pads(channels * padded);
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, y = index % g.height;
    const int64_t offset = n * channels * plane;
    for (int64_t c = 0; c < channels; ++c) {
      copy_row(a_rows.data() + c * stride, args.lhs + offset + c * plane + y * width, width);
    }
    for (int i = 0; i < K; ++i) {
      scalar_t* out = args.out + (n * K * K + i * K) * plane + y * width;
      const int64_t sy = border_index(y + i - g.radius, g.height, g.mode);
      if (sy < 0) {
        if (args.accumulate) continue;
        for (int j = 0; j < K; ++j) std::fill(out + j * plane, out + j * plane + width, scalar_t(0));
        continue;
      }
      for (int64_t c = 0; c < channels; ++c) {
        load_padded_row(pads.data() + c * padded, args.rhs + offset + c * plane + sy * width, g);
      }
      if (args.accumulate) {
        correlate_window_row<K, true>(out, plane, a_rows.data(), pads.data(), channels, width);
      } else {
        correlate_window_row<K, false>(out, plane, a_rows.data(), pads.data(), channels, width);
      }
    }
  }
}

// Calls name<K>(args, begin, end) for K = 3, 5, 7; returns false for other window sizes.
#define FEATUP_BLOCKED_FOR_K(name, args, begin, end)          \
  switch ((args).g.size()) {                                 \
    case 3: name<3, scalar_t, acc_t>(args, begin, end); return; \
    case 5: name<5, scalar_t, acc_t>(args, begin, end); return; \
    case 7: name<7, scalar_t, acc_t>(args, begin, end); return; \
    default: break;                                          \
  }
#else
#define FEATUP_BLOCKED_FOR_K(name, args, begin, end)
#endif

template <typename scalar_t, typename acc_t>
FEATUP_INLINE void aggregate_rows(const WindowArgs<scalar_t>& args, int64_t begin, int64_t end) {
  FEATUP_BLOCKED_FOR_K(aggregate_rows_blocked, args, begin, end)
  channel_rows<scalar_t, acc_t, true, false>(args, begin, end);
}

template <typename scalar_t, typename acc_t>
FEATUP_INLINE void aggregate_adjoint_rows(const WindowArgs<scalar_t>& args, int64_t begin,
                                          int64_t end) {
  FEATUP_BLOCKED_FOR_K(aggregate_adjoint_rows_blocked, args, begin, end)
  channel_rows<scalar_t, acc_t, false, true>(args, begin, end);
}

template <typename scalar_t, typename acc_t>
FEATUP_INLINE void correlation_backward_rows(const WindowArgs<scalar_t>& args, int64_t begin,
                                             int64_t end) {
  FEATUP_BLOCKED_FOR_K(correlation_backward_rows_blocked, args, begin, end)
  channel_rows<scalar_t, acc_t, true, true>(args, begin, end);
}

// out (B, k*k, H, W) = correlation of lhs = a (B, C, H, W) with the windows of rhs = b.
template <typename scalar_t, typename acc_t>
FEATUP_INLINE void correlate_rows(const WindowArgs<scalar_t>& args, int64_t begin, int64_t end) {
  FEATUP_BLOCKED_FOR_K(correlate_rows_blocked, args, begin, end)
  const WindowGeometry& g = args.g;
  const int64_t plane = g.plane(), taps = g.taps(), channels = args.channels;
  std::vector<acc_t> acc(taps * g.width), pad(g.width + 2 * g.radius);
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, y = index % g.height;
    std::fill(acc.begin(), acc.end(), acc_t(0));
    correlate_row(acc.data(), pad.data(), args.lhs + n * channels * plane,
                  args.rhs + n * channels * plane, channels, g, y);
    for (int64_t p = 0; p < taps; ++p) {
      scalar_t* out = args.out + (n * taps + p) * plane + y * g.width;
      const acc_t* sums = acc.data() + p * g.width;
      if (args.accumulate) {
        add_row(out, sums, g.width);
      } else {
        copy_row(out, sums, g.width);
      }
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
#define FEATUP_LAUNCH_ROWS(rows, lhs_tensor, rhs_tensor, out_tensor, channels_, g_, row_cost, \
                           accumulate_)                                                    \
  AT_DISPATCH_FLOATING_TYPES_AND2(                                                        \
      at::kHalf, at::kBFloat16, (rhs_tensor).scalar_type(), #rows, [&] {                  \
        const WindowArgs<scalar_t> args{(lhs_tensor).const_data_ptr<scalar_t>(),          \
                                        (rhs_tensor).const_data_ptr<scalar_t>(),          \
                                        (out_tensor).mutable_data_ptr<scalar_t>(),        \
                                        channels_, g_, accumulate_};                      \
        constexpr int64_t kMinTaskCost = int64_t(1) << 15;                                \
        const int64_t grain = std::max<int64_t>(1, kMinTaskCost / std::max<int64_t>(row_cost, 1)); \
        at::parallel_for(0, (rhs_tensor).size(0) * (g_).height, grain,                 \
                         [&](int64_t begin, int64_t end) { rows##_simd(args, begin, end); }); \
      })

}  // namespace

void window_correlate_cpu(const at::Tensor& a, const at::Tensor& b, at::Tensor& out,
                          const WindowGeometry& g) {
  FEATUP_LAUNCH_ROWS(correlate_rows, a, b, out, a.size(1), g, a.size(1) * g.taps() * g.width,
                     false);
}

void window_correlate_accumulate_cpu(const at::Tensor& a, const at::Tensor& b, at::Tensor& out,
                                     const WindowGeometry& g) {
  FEATUP_LAUNCH_ROWS(correlate_rows, a, b, out, a.size(1), g, a.size(1) * g.taps() * g.width,
                     true);
}

void window_aggregate_cpu(const at::Tensor& kernel, const at::Tensor& values, at::Tensor& out,
                          const WindowGeometry& g) {
  FEATUP_LAUNCH_ROWS(aggregate_rows, kernel, values, out, values.size(1), g,
                     values.size(1) * g.taps() * g.width, false);
}

void window_aggregate_adjoint_cpu(const at::Tensor& kernel, const at::Tensor& a,
                                  at::Tensor& out, const WindowGeometry& g) {
  FEATUP_LAUNCH_ROWS(aggregate_adjoint_rows, kernel, a, out, a.size(1), g,
                     a.size(1) * g.taps() * g.width, false);
}

void window_correlation_backward_cpu(const at::Tensor& grad, const at::Tensor& keys,
                                     at::Tensor& out, const WindowGeometry& g) {
  FEATUP_LAUNCH_ROWS(correlation_backward_rows, grad, keys, out, keys.size(1), g,
                     2 * keys.size(1) * g.taps() * g.width, false);
}

}  // namespace featup_mmseg
