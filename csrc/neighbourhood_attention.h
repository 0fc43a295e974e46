// Device-independent entry points of the cross-scale neighbourhood attention ops
// (neighbourhood_attention.cpp) and the per-device launchers they call (cpu/, cuda/).
// Launchers receive contiguous inputs of one floating dtype on one device and a
// preallocated, non-empty output.
#pragma once

#include <ATen/ATen.h>

#include "common/neighbourhood_indexing.h"

namespace featup_mmseg {

// Ops registered with the dispatcher (schemas in bindings.cpp).
// scores (N, k*k, H, W) of queries (N, D, H, W) against the windows of keys (N, D, h, w)
at::Tensor neighbourhood_attention_scores(const at::Tensor& queries, const at::Tensor& keys,
                                          int64_t kernel_size, int64_t dilation,
                                          c10::string_view border);
// (N, C, H, W): attn (N, k*k, H, W) applied to the windows of values (N, C, h, w)
at::Tensor neighbourhood_attention_aggregate(const at::Tensor& attn, const at::Tensor& values,
                                             int64_t dilation, c10::string_view border);
// (N, C, h, w): the adjoint of the aggregate in its values, applied to features (N, C, H, W)
at::Tensor neighbourhood_attention_transpose(const at::Tensor& attn, const at::Tensor& features,
                                             at::IntArrayRef input_size, int64_t dilation,
                                             c10::string_view border);

// out[n, t, y, x] = sum_c queries[n, c, y, x] * keys[n, c, row(y, ty), col(x, tx)]
void neighbourhood_scores_cpu(const at::Tensor& queries, const at::Tensor& keys,
                              at::Tensor& out, const NeighbourhoodGeometry& g);
// out[n, c, y, x] = sum_t attn[n, t, y, x] * values[n, c, row(y, ty), col(x, tx)]
void neighbourhood_aggregate_cpu(const at::Tensor& attn, const at::Tensor& values,
                                 at::Tensor& out, const NeighbourhoodGeometry& g);
// out[n, c, i, j] = sum of attn[n, t, y, x] * features[n, c, y, x] over the (t, y, x) whose
// tap reads (i, j)
void neighbourhood_transpose_cpu(const at::Tensor& attn, const at::Tensor& features,
                                 at::Tensor& out, const NeighbourhoodGeometry& g);

#ifdef WITH_CUDA
void neighbourhood_scores_cuda(const at::Tensor& queries, const at::Tensor& keys,
                               at::Tensor& out, const NeighbourhoodGeometry& g);
void neighbourhood_aggregate_cuda(const at::Tensor& attn, const at::Tensor& values,
                                  at::Tensor& out, const NeighbourhoodGeometry& g);
void neighbourhood_transpose_cuda(const at::Tensor& attn, const at::Tensor& features,
                                  at::Tensor& out, const NeighbourhoodGeometry& g);
#endif

}  // namespace featup_mmseg
