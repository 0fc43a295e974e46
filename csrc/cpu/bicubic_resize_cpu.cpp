// CPU launchers of the bicubic resize and its adjoint.
//
// Both are separable products dst = R src C^T with sparse R and C: the resize's matrices
// (four entries a row) or their transposes (the adjoint; the entries of a row are the
// outputs reading that input). Each plane is one task of at::parallel_for: a scratch plane
// holds the first product, along whichever axis keeps the gathers (the per-element pass
// over C, which does not vectorise) on the smaller plane; the pass over R combines whole
// rows and vectorises. The matrices are built once per call from the helpers of
// common/bicubic_indexing.h, which the CUDA kernels share. Half types accumulate in float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../bicubic_resize.h"
#include "simd_clones.h"

namespace featup_mmseg {
namespace {

// A sparse (rows, *) matrix with the same number of entries in every row (rows with fewer
// are padded with zero weights): entry e of row r is (index[e * rows + r], weight[...]).
// Stored entry-major, so that a pass over the rows for one entry is a vector loop.
template <typename acc_t>
struct SparseRows {
  int64_t rows = 0;
  int64_t entries = 0;
  std::vector<int32_t> index;
  std::vector<acc_t> weight;

  // from the entries of each row, as (index, weight) lists
  explicit SparseRows(const std::vector<std::vector<std::pair<int64_t, acc_t>>>& lists)
      : rows(int64_t(lists.size())) {
    for (const auto& list : lists) entries = std::max<int64_t>(entries, int64_t(list.size()));
    index.assign(entries * rows, 0);
    weight.assign(entries * rows, acc_t(0));
    for (int64_t r = 0; r < rows; ++r) {
      for (size_t e = 0; e < lists[r].size(); ++e) {
        index[e * rows + r] = int32_t(lists[r][e].first);
        weight[e * rows + r] = lists[r][e].second;
      }
    }
  }
};

template <typename acc_t>
using EntryLists = std::vector<std::vector<std::pair<int64_t, acc_t>>>;

// The (out, in) resize matrix of an axis.
template <typename acc_t>
SparseRows<acc_t> resize_matrix(int64_t in, int64_t out) {
  EntryLists<acc_t> lists(out);
  for (int64_t o = 0; o < out; ++o) {
    int64_t index[4];
    acc_t weight[4];
    bicubic_taps<acc_t>(o, in, out, index, weight);
    for (int tap = 0; tap < 4; ++tap) lists[o].emplace_back(index[tap], weight[tap]);
  }
  return SparseRows<acc_t>(lists);
}

// Its transpose (in, out), each row gathering from the outputs that read that input.
template <typename acc_t>
SparseRows<acc_t> adjoint_matrix(int64_t in, int64_t out) {
  EntryLists<acc_t> lists(in);
  for (int64_t i = 0; i < in; ++i) {
    int64_t first, last;
    bicubic_readers(i, in, out, &first, &last);
    for (int64_t o = first; o <= last; ++o) {
      const acc_t w = bicubic_weight<acc_t>(o, i, in, out);
      if (w != acc_t(0)) lists[i].emplace_back(o, w);
    }
  }
  return SparseRows<acc_t>(lists);
}

// dst = R src C^T for one plane: src (src_h, src_w), dst (R rows, C rows); R's columns index
// src's rows, C's its columns. The scratch plane holds the first of the two products.
template <typename scalar_t, typename acc_t>
struct PlaneProduct {
  const SparseRows<acc_t>& rows;
  const SparseRows<acc_t>& columns;
  int64_t src_height, src_width, dst_height, dst_width;

  // scratch (src_h, dst_w) = src C^T (gathers over the smaller source rows), then dst = R scratch
  FEATUP_INLINE void columns_first(const scalar_t* src, scalar_t* dst, acc_t* scratch,
                                   acc_t* row) const {
    for (int64_t y = 0; y < src_height; ++y) {
      gather_row(src + y * src_width, scratch + y * dst_width, row);
    }
    for (int64_t y = 0; y < dst_height; ++y) {
      combine_rows(rows, y, scratch, dst_width, row);
      for (int64_t x = 0; x < dst_width; ++x) {
        dst[y * dst_width + x] = static_cast<scalar_t>(row[x]);
      }
    }
  }

  // scratch (dst_h, src_w) = R src, then dst = scratch C^T (gathers over the smaller rows)
  FEATUP_INLINE void rows_first(const scalar_t* src, scalar_t* dst, acc_t* scratch,
                                acc_t* row) const {
    for (int64_t y = 0; y < dst_height; ++y) {
      combine_rows(rows, y, src, src_width, scratch + y * src_width);
      gather_row(scratch + y * src_width, dst + y * dst_width, row);
    }
  }

  // out[x] = sum_e columns(x, e) * in[index(x, e)] for x < dst_width, through acc
  template <typename in_t, typename out_t>
  FEATUP_INLINE void gather_row(const in_t* __restrict__ in, out_t* __restrict__ out,
                                acc_t* __restrict__ acc) const {
    for (int64_t x = 0; x < dst_width; ++x) acc[x] = acc_t(0);
    for (int64_t e = 0; e < columns.entries; ++e) {
      const int32_t* __restrict__ index = columns.index.data() + e * dst_width;
      const acc_t* __restrict__ weight = columns.weight.data() + e * dst_width;
      for (int64_t x = 0; x < dst_width; ++x) acc[x] += weight[x] * acc_t(in[index[x]]);
    }
    for (int64_t x = 0; x < dst_width; ++x) out[x] = static_cast<out_t>(acc[x]);
  }

  // out = sum_e m(y, e) * plane row index(y, e), rows of `width` values
  template <typename in_t>
  static FEATUP_INLINE void combine_rows(const SparseRows<acc_t>& m, int64_t y,
                                         const in_t* plane, int64_t width, acc_t* out) {
    for (int64_t x = 0; x < width; ++x) out[x] = acc_t(0);
    for (int64_t e = 0; e < m.entries; ++e) {
      const acc_t w = m.weight[e * m.rows + y];
      const in_t* __restrict__ in = plane + int64_t(m.index[e * m.rows + y]) * width;
      for (int64_t x = 0; x < width; ++x) out[x] += w * acc_t(in[x]);
    }
  }
};

// Where plane n = b * C + c of src starts: src's planes need not be contiguous with each
// other (a channel slice of a batch is read in place).
struct PlaneStrides {
  int64_t channels, batch_stride, channel_stride;

  int64_t offset(int64_t plane) const {
    return plane / channels * batch_stride + plane % channels * channel_stride;
  }
};

template <typename scalar_t, typename acc_t>
FEATUP_INLINE void product_planes(const PlaneProduct<scalar_t, acc_t>& product,
                                  const scalar_t* src, const PlaneStrides& strides,
                                  scalar_t* dst, int64_t begin, int64_t end) {
  const auto& p = product;
  // The gathers fill (src_h, dst_w) values columns first, (dst_h, dst_w) rows first.
  const bool columns_first = p.src_height <= p.dst_height;
  std::vector<acc_t> scratch(columns_first ? p.src_height * p.dst_width
                                           : p.dst_height * p.src_width);
  std::vector<acc_t> row(p.dst_width);
  for (int64_t plane = begin; plane < end; ++plane) {
    const scalar_t* in = src + strides.offset(plane);
    scalar_t* out = dst + plane * p.dst_height * p.dst_width;
    if (columns_first) {
      p.columns_first(in, out, scratch.data(), row.data());
    } else {
      p.rows_first(in, out, scratch.data(), row.data());
    }
  }
}

FEATUP_SIMD_CLONES void product_planes_simd(const PlaneProduct<float, float>& p,
                                            const float* src, const PlaneStrides& strides,
                                            float* dst, int64_t begin, int64_t end) {
  product_planes(p, src, strides, dst, begin, end);
}
FEATUP_SIMD_CLONES void product_planes_simd(const PlaneProduct<double, double>& p,
                                            const double* src, const PlaneStrides& strides,
                                            double* dst, int64_t begin, int64_t end) {
  product_planes(p, src, strides, dst, begin, end);
}
template <typename scalar_t, typename acc_t>
void product_planes_simd(const PlaneProduct<scalar_t, acc_t>& p, const scalar_t* src,
                         const PlaneStrides& strides, scalar_t* dst, int64_t begin,
                         int64_t end) {
  product_planes(p, src, strides, dst, begin, end);
}

// dst (B, C, dst_h, dst_w) = R src C^T plane by plane, for the resize (adjoint false) of
// geometry g or its adjoint.
void resize_product(const at::Tensor& src, at::Tensor& dst, const ResizeGeometry& g,
                    bool adjoint) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "bicubic_resize",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const SparseRows<acc_t> rows = adjoint ? adjoint_matrix<acc_t>(g.in_height, g.out_height)
                                           : resize_matrix<acc_t>(g.in_height, g.out_height);
    const SparseRows<acc_t> columns = adjoint ? adjoint_matrix<acc_t>(g.in_width, g.out_width)
                                              : resize_matrix<acc_t>(g.in_width, g.out_width);
    const PlaneProduct<scalar_t, acc_t> product{rows, columns, src.size(2), src.size(3),
                                                dst.size(2), dst.size(3)};
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    const PlaneStrides strides{src.size(1), src.stride(0), src.stride(1)};
    scalar_t* out = dst.mutable_data_ptr<scalar_t>();
    // a plane's multiply-adds, so that tiny problems stay on one thread
    const int64_t plane_cost = rows.entries * rows.rows * dst.size(3) +
                               columns.entries * columns.rows *
                                   std::max(src.size(2), dst.size(2));
    constexpr int64_t kMinTaskCost = int64_t(1) << 15;
    const int64_t grain = std::max<int64_t>(1, kMinTaskCost / std::max<int64_t>(plane_cost, 1));
    at::parallel_for(0, src.size(0) * src.size(1), grain, [&](int64_t begin, int64_t end) {
      product_planes_simd(product, in, strides, out, begin, end);
    });
  });
}

}  // namespace

void bicubic_resize_cpu(const at::Tensor& x, at::Tensor& out, const ResizeGeometry& g) {
  resize_product(x, out, g, false);
}

void bicubic_resize_adjoint_cpu(const at::Tensor& grad, at::Tensor& out,
                                const ResizeGeometry& g) {
  resize_product(grad, out, g, true);
}

}  // namespace featup_mmseg
