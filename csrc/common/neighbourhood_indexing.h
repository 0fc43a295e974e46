// Shared host/device helpers of the cross-scale neighbourhood attention ops.
//
// A high-res query at (y, x) of an H x W map attends to a k x k window of an h x w map of
// keys and values. Rows and columns are independent: tap t of the window along an axis
// reads source index neighbourhood_source(y, t), from the query's low-res position
// (nearest-exact: the cell whose extent contains the query's pixel centre) and the border
// rule. The transpose (the values and keys gradient) gathers through the preimage of that
// mapping, so no kernel needs atomics.
//
// The *_element functions compute one output element from its flat index, all tensors
// contiguous: they are the whole body of the CUDA kernels (cuda/neighbourhood_kernels.cuh).
#pragma once

#include <cstdint>

#include "window_indexing.h"  // FEATUP_HOST_DEVICE

namespace featup_mmseg {

enum class NeighbourhoodBorder : int { Shift = 0, Clamp = 1 };

struct NeighbourhoodGeometry {
  int64_t height;      // H, of the queries
  int64_t width;       // W
  int64_t in_height;   // h, of the keys and values
  int64_t in_width;    // w
  int64_t kernel_size;
  int64_t dilation;
  NeighbourhoodBorder border;

  FEATUP_HOST_DEVICE int64_t taps() const { return kernel_size * kernel_size; }
  FEATUP_HOST_DEVICE int64_t plane() const { return height * width; }
  FEATUP_HOST_DEVICE int64_t in_plane() const { return in_height * in_width; }
};

// The low-res cell of high-res index y along an axis of n -> m cells: floor((y + 1/2) m / n)
// in exact integer arithmetic (F.interpolate's 'nearest-exact', which NAF and AnyUp use to
// upsample keys and values); always < m for y < n.
FEATUP_HOST_DEVICE int64_t nearest_exact_cell(int64_t y, int64_t n, int64_t m) {
  return (2 * y + 1) * m / (2 * n);
}

// Source index along an axis (n high-res, m low-res cells) of tap t of query index y.
// Shift (NATTEN's neighbourhood, on the low-res map): the window's cells are those of the
// query cell's residue class modulo the dilation, k of them in a row, centred on the cell
// and moved to stay inside the map (needs k * dilation <= m: the shortest class has
// m / dilation cells). Clamp: cell + (t - k / 2) * dilation, clamped into [0, m - 1], so taps
// repeat at borders.
FEATUP_HOST_DEVICE int64_t neighbourhood_source(int64_t y, int64_t t, int64_t n, int64_t m,
                                                int64_t k, int64_t dilation,
                                                NeighbourhoodBorder border) {
  const int64_t cell = nearest_exact_cell(y, n, m), half = k / 2;
  if (border == NeighbourhoodBorder::Shift) {
    const int64_t residue = cell % dilation;
    const int64_t class_size = (m - 1 - residue) / dilation + 1;
    int64_t start = cell / dilation - half;
    start = start < 0 ? 0 : (start > class_size - k ? class_size - k : start);
    return residue + (start + t) * dilation;
  }
  const int64_t source = cell + (t - half) * dilation;
  return source < 0 ? 0 : (source > m - 1 ? m - 1 : source);
}

FEATUP_HOST_DEVICE int64_t neighbourhood_row(const NeighbourhoodGeometry& g, int64_t y,
                                             int64_t t) {
  return neighbourhood_source(y, t, g.height, g.in_height, g.kernel_size, g.dilation, g.border);
}

FEATUP_HOST_DEVICE int64_t neighbourhood_col(const NeighbourhoodGeometry& g, int64_t x,
                                             int64_t t) {
  return neighbourhood_source(x, t, g.width, g.in_width, g.kernel_size, g.dilation, g.border);
}

// A half-open range [first, last) of indices.
struct IndexRange {
  int64_t first;
  int64_t last;
};

// The first high-res index y with nearest_exact_cell(y, n, m) >= c, for 0 <= c <= m:
// (2y + 1) m >= 2 c n, i.e. y >= (2 c n - m) / (2 m).
FEATUP_HOST_DEVICE int64_t first_query_of_cell(int64_t c, int64_t n, int64_t m) {
  const int64_t num = 2 * c * n - m;
  return num <= 0 ? int64_t(0) : (num + 2 * m - 1) / (2 * m);
}

// The high-res indices whose windows can reach low-res cell s along an axis: every window
// tap lies within (k - 1) * dilation cells of the query's own cell (Shift's window holds
// that cell, Clamp moves taps towards it), so the queries of cells
// [s - (k - 1) * dilation, s + (k - 1) * dilation] cover them.
FEATUP_HOST_DEVICE IndexRange neighbourhood_queries_near(int64_t s, int64_t n, int64_t m,
                                                         int64_t k, int64_t dilation) {
  const int64_t reach = (k - 1) * dilation;
  const int64_t lo = s - reach < 0 ? 0 : s - reach;
  const int64_t hi = s + reach > m - 1 ? m - 1 : s + reach;
  const int64_t last = first_query_of_cell(hi + 1, n, m);
  return IndexRange{first_query_of_cell(lo, n, m), last < n ? last : n};
}

// Flat-index entry points.

// scores (N, k*k, H, W) of queries (N, C, H, W) against the windows of keys (N, C, h, w)
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t neighbourhood_scores_element(const scalar_t* queries,
                                                      const scalar_t* keys, int64_t channels,
                                                      const NeighbourhoodGeometry& g,
                                                      int64_t index) {
  const int64_t plane = g.plane(), taps = g.taps(), pixel = index % plane;
  const int64_t t = index / plane % taps, n = index / (plane * taps);
  const int64_t y = pixel / g.width, x = pixel % g.width;
  const int64_t source = neighbourhood_row(g, y, t / g.kernel_size) * g.in_width +
                         neighbourhood_col(g, x, t % g.kernel_size);
  const scalar_t* q = queries + n * channels * plane + pixel;
  const scalar_t* k = keys + n * channels * g.in_plane() + source;
  acc_t sum = acc_t(0);
  for (int64_t c = 0; c < channels; ++c) sum += acc_t(q[c * plane]) * acc_t(k[c * g.in_plane()]);
  return sum;
}

// aggregate (N, C, H, W) of attn (N, k*k, H, W) over the windows of values (N, C, h, w)
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t neighbourhood_aggregate_element(const scalar_t* attn,
                                                         const scalar_t* values,
                                                         int64_t channels,
                                                         const NeighbourhoodGeometry& g,
                                                         int64_t index) {
  const int64_t plane = g.plane(), k = g.kernel_size, pixel = index % plane;
  const int64_t channel_plane = index / plane, n = channel_plane / channels;
  const int64_t y = pixel / g.width, x = pixel % g.width;
  const scalar_t* weights = attn + n * g.taps() * plane + pixel;
  const scalar_t* v = values + channel_plane * g.in_plane();
  acc_t sum = acc_t(0);
  for (int64_t ty = 0; ty < k; ++ty) {
    const scalar_t* row = v + neighbourhood_row(g, y, ty) * g.in_width;
    for (int64_t tx = 0; tx < k; ++tx) {
      sum += acc_t(weights[(ty * k + tx) * plane]) * acc_t(row[neighbourhood_col(g, x, tx)]);
    }
  }
  return sum;
}

// transpose (N, C, h, w): the sum of attn[n, t, y, x] * features[n, c, y, x] over the
// (t, y, x) whose tap reads (i, j), gathered over the queries near (i, j)
template <typename scalar_t, typename acc_t>
FEATUP_HOST_DEVICE acc_t neighbourhood_transpose_element(const scalar_t* attn,
                                                         const scalar_t* features,
                                                         int64_t channels,
                                                         const NeighbourhoodGeometry& g,
                                                         int64_t index) {
  const int64_t plane = g.plane(), k = g.kernel_size, cell = index % g.in_plane();
  const int64_t channel_plane = index / g.in_plane(), n = channel_plane / channels;
  const int64_t i = cell / g.in_width, j = cell % g.in_width;
  const IndexRange rows =
      neighbourhood_queries_near(i, g.height, g.in_height, k, g.dilation);
  const IndexRange cols = neighbourhood_queries_near(j, g.width, g.in_width, k, g.dilation);
  const scalar_t* weights = attn + n * g.taps() * plane;
  const scalar_t* f = features + channel_plane * plane;
  acc_t sum = acc_t(0);
  for (int64_t y = rows.first; y < rows.last; ++y) {
    for (int64_t ty = 0; ty < k; ++ty) {
      if (neighbourhood_row(g, y, ty) != i) continue;
      for (int64_t x = cols.first; x < cols.last; ++x) {
        for (int64_t tx = 0; tx < k; ++tx) {
          if (neighbourhood_col(g, x, tx) != j) continue;
          const int64_t pixel = y * g.width + x;
          sum += acc_t(weights[(ty * k + tx) * plane + pixel]) * acc_t(f[pixel]);
        }
      }
    }
  }
  return sum;
}

}  // namespace featup_mmseg
