// CPU launchers of the cross-scale neighbourhood attention ops.
//
// Work is split over output rows with at::parallel_for, so threads never write the same
// memory: high-res rows (n, y) for the scores and the aggregate, low-res rows (n, i) for
// the transpose, which gathers the (y, tap row) pairs reading row i (its preimage) and
// scatters along the row into a private accumulator. The window's source indices depend
// on one axis each, so they are tabulated once per launch. Half types accumulate in float
// (at::opmath_type).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../neighbourhood_attention.h"

namespace featup_mmseg {
namespace {

// Source indices of every tap along both axes: rows[y * k + t], and cols[t * W + x]
// (contiguous in x, for the loops over a row).
struct SourceTables {
  std::vector<int64_t> rows;
  std::vector<int64_t> cols;

  explicit SourceTables(const NeighbourhoodGeometry& g)
      : rows(g.height * g.kernel_size), cols(g.kernel_size * g.width) {
    const int64_t k = g.kernel_size;
    for (int64_t y = 0; y < g.height; ++y) {
      for (int64_t t = 0; t < k; ++t) rows[y * k + t] = neighbourhood_row(g, y, t);
    }
    for (int64_t t = 0; t < k; ++t) {
      for (int64_t x = 0; x < g.width; ++x) cols[t * g.width + x] = neighbourhood_col(g, x, t);
    }
  }
};

// For every low-res row i, the pairs (y, t) whose tap row t reads row i:
// entries [offsets[i], offsets[i + 1]) of queries and taps.
struct RowPreimages {
  std::vector<int64_t> offsets, queries, taps;

  RowPreimages(const NeighbourhoodGeometry& g, const SourceTables& tables)
      : offsets(g.in_height + 1, 0) {
    const int64_t k = g.kernel_size;
    for (int64_t i = 0; i < g.in_height; ++i) {
      const IndexRange near =
          neighbourhood_queries_near(i, g.height, g.in_height, k, g.dilation);
      for (int64_t y = near.first; y < near.last; ++y) {
        for (int64_t t = 0; t < k; ++t) {
          if (tables.rows[y * k + t] != i) continue;
          queries.push_back(y);
          taps.push_back(t);
        }
      }
      offsets[i + 1] = int64_t(queries.size());
    }
  }
};

template <typename dst_t, typename src_t>
inline void convert_row(dst_t* __restrict__ dst, const src_t* __restrict__ src, int64_t n) {
  for (int64_t x = 0; x < n; ++x) dst[x] = static_cast<dst_t>(src[x]);
}

// out rows (n, y) in [begin, end) of the scores (N, k*k, H, W).
template <typename scalar_t, typename acc_t>
void scores_rows(const scalar_t* queries, const scalar_t* keys, scalar_t* out,
                 int64_t channels, const NeighbourhoodGeometry& g, const SourceTables& tables,
                 int64_t begin, int64_t end) {
  const int64_t k = g.kernel_size, width = g.width, in_width = g.in_width;
  std::vector<acc_t> acc(g.taps() * width), query(width);
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, y = index % g.height;
    std::fill(acc.begin(), acc.end(), acc_t(0));
    for (int64_t c = 0; c < channels; ++c) {
      convert_row(query.data(), queries + ((n * channels + c) * g.height + y) * width, width);
      const scalar_t* key_plane = keys + (n * channels + c) * g.in_plane();
      for (int64_t ty = 0; ty < k; ++ty) {
        const scalar_t* key_row = key_plane + tables.rows[y * k + ty] * in_width;
        for (int64_t tx = 0; tx < k; ++tx) {
          const int64_t* cols = tables.cols.data() + tx * width;
          acc_t* sums = acc.data() + (ty * k + tx) * width;
          for (int64_t x = 0; x < width; ++x) sums[x] += query[x] * acc_t(key_row[cols[x]]);
        }
      }
    }
    for (int64_t t = 0; t < g.taps(); ++t) {
      convert_row(out + ((n * g.taps() + t) * g.height + y) * width, acc.data() + t * width,
                  width);
    }
  }
}

// out rows (n, y) in [begin, end) of the aggregate (N, C, H, W).
template <typename scalar_t, typename acc_t>
void aggregate_rows(const scalar_t* attn, const scalar_t* values, scalar_t* out,
                    int64_t channels, const NeighbourhoodGeometry& g, const SourceTables& tables,
                    int64_t begin, int64_t end) {
  const int64_t k = g.kernel_size, width = g.width, in_width = g.in_width;
  std::vector<acc_t> tap_rows(g.taps() * width), acc(width);
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, y = index % g.height;
    for (int64_t t = 0; t < g.taps(); ++t) {
      convert_row(tap_rows.data() + t * width,
                  attn + ((n * g.taps() + t) * g.height + y) * width, width);
    }
    for (int64_t c = 0; c < channels; ++c) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const scalar_t* value_plane = values + (n * channels + c) * g.in_plane();
      for (int64_t ty = 0; ty < k; ++ty) {
        const scalar_t* value_row = value_plane + tables.rows[y * k + ty] * in_width;
        for (int64_t tx = 0; tx < k; ++tx) {
          const int64_t* cols = tables.cols.data() + tx * width;
          const acc_t* weights = tap_rows.data() + (ty * k + tx) * width;
          for (int64_t x = 0; x < width; ++x) acc[x] += weights[x] * acc_t(value_row[cols[x]]);
        }
      }
      convert_row(out + ((n * channels + c) * g.height + y) * width, acc.data(), width);
    }
  }
}

// out rows (n, i) in [begin, end) of the transpose (N, C, h, w).
template <typename scalar_t, typename acc_t>
void transpose_rows(const scalar_t* attn, const scalar_t* features, scalar_t* out,
                    int64_t channels, const NeighbourhoodGeometry& g, const SourceTables& tables,
                    const RowPreimages& preimages, int64_t begin, int64_t end) {
  const int64_t k = g.kernel_size, width = g.width, in_width = g.in_width;
  std::vector<acc_t> tap_rows, acc(in_width);
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.in_height, i = index % g.in_height;
    const int64_t first = preimages.offsets[i], count = preimages.offsets[i + 1] - first;
    // the k tap rows (t, tx) of each (y, t) in the preimage, reused for every channel
    tap_rows.resize(count * k * width);
    for (int64_t e = 0; e < count; ++e) {
      const int64_t y = preimages.queries[first + e], ty = preimages.taps[first + e];
      for (int64_t tx = 0; tx < k; ++tx) {
        convert_row(tap_rows.data() + (e * k + tx) * width,
                    attn + ((n * g.taps() + ty * k + tx) * g.height + y) * width, width);
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const scalar_t* feature_plane = features + (n * channels + c) * g.plane();
      for (int64_t e = 0; e < count; ++e) {
        const scalar_t* feature_row = feature_plane + preimages.queries[first + e] * width;
        for (int64_t tx = 0; tx < k; ++tx) {
          const int64_t* cols = tables.cols.data() + tx * width;
          const acc_t* weights = tap_rows.data() + (e * k + tx) * width;
          for (int64_t x = 0; x < width; ++x) {
            acc[cols[x]] += weights[x] * acc_t(feature_row[x]);
          }
        }
      }
      convert_row(out + ((n * channels + c) * g.in_height + i) * in_width, acc.data(), in_width);
    }
  }
}

// Rows of at most about this many multiply-adds share a task: tiny problems stay on one
// thread.
constexpr int64_t kMinTaskCost = int64_t(1) << 15;

int64_t grain_size(int64_t row_cost) {
  return std::max<int64_t>(1, kMinTaskCost / std::max<int64_t>(row_cost, 1));
}

}  // namespace

void neighbourhood_scores_cpu(const at::Tensor& queries, const at::Tensor& keys,
                              at::Tensor& out, const NeighbourhoodGeometry& g) {
  const SourceTables tables(g);
  const int64_t channels = queries.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "neighbourhood_scores_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* q = queries.const_data_ptr<scalar_t>();
    const scalar_t* kv = keys.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, queries.size(0) * g.height, grain_size(channels * g.taps() * g.width),
                     [&](int64_t begin, int64_t end) {
                       scores_rows<scalar_t, acc_t>(q, kv, o, channels, g, tables, begin, end);
                     });
  });
}

void neighbourhood_aggregate_cpu(const at::Tensor& attn, const at::Tensor& values,
                                 at::Tensor& out, const NeighbourhoodGeometry& g) {
  const SourceTables tables(g);
  const int64_t channels = values.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(),
                                  "neighbourhood_aggregate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = attn.const_data_ptr<scalar_t>();
    const scalar_t* v = values.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, values.size(0) * g.height, grain_size(channels * g.taps() * g.width),
                     [&](int64_t begin, int64_t end) {
                       aggregate_rows<scalar_t, acc_t>(a, v, o, channels, g, tables, begin, end);
                     });
  });
}

void neighbourhood_transpose_cpu(const at::Tensor& attn, const at::Tensor& features,
                                 at::Tensor& out, const NeighbourhoodGeometry& g) {
  const SourceTables tables(g);
  const RowPreimages preimages(g, tables);
  const int64_t channels = features.size(1);
  // each low-res row gathers about H * k / h (y, t) pairs of k * W multiply-adds
  const int64_t row_cost =
      channels * g.taps() * g.width * std::max<int64_t>(1, g.height / g.in_height);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(),
                                  "neighbourhood_transpose_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = attn.const_data_ptr<scalar_t>();
    const scalar_t* f = features.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, features.size(0) * g.in_height, grain_size(row_cost),
                     [&](int64_t begin, int64_t end) {
                       transpose_rows<scalar_t, acc_t>(a, f, o, channels, g, tables, preimages,
                                                       begin, end);
                     });
  });
}

}  // namespace featup_mmseg
