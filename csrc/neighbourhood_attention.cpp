// Argument checks, output allocation and device dispatch of the cross-scale neighbourhood
// attention ops. The Python API (featup_mmseg/ops) checks arguments first with friendlier
// messages; these checks keep direct torch.ops calls from reaching a kernel with bad shapes.
#include "neighbourhood_attention.h"

#include <string>

#include "window_ops.h"  // check_map

namespace featup_mmseg {
namespace {

#ifdef WITH_CUDA
#define FEATUP_NEIGHBOURHOOD_LAUNCH(name, out) ((out).is_cuda() ? &name##_cuda : &name##_cpu)
#else
// Without CUDA kernels no CUDA implementation is registered: only CPU tensors get here.
#define FEATUP_NEIGHBOURHOOD_LAUNCH(name, out) (&name##_cpu)
#endif

NeighbourhoodBorder parse_border(c10::string_view name) {
  if (name == "shift") return NeighbourhoodBorder::Shift;
  if (name == "clamp") return NeighbourhoodBorder::Clamp;
  TORCH_CHECK(false, "border must be 'shift' or 'clamp', got '", std::string(name), "'");
}

void check_pair(const char* op, const char* ref_name, const at::Tensor& reference,
                const char* name, const at::Tensor& other) {
  check_map(op, ref_name, reference);
  check_map(op, name, other);
  TORCH_CHECK(other.device() == reference.device(), op, ": ", name, " is on ", other.device(),
              " but ", ref_name, " is on ", reference.device());
  TORCH_CHECK(other.scalar_type() == reference.scalar_type(), op, ": ", name, " has dtype ",
              other.scalar_type(), " but ", ref_name, " has dtype ", reference.scalar_type());
  TORCH_CHECK(other.size(0) == reference.size(0), op, ": ", name, " must have batch size ",
              reference.size(0), " like ", ref_name, ", got ", other.size(0));
}

// The geometry of queries (H, W) attending to an (h, w) map, checked.
NeighbourhoodGeometry make_geometry(const char* op, int64_t height, int64_t width,
                                    int64_t in_height, int64_t in_width, int64_t kernel_size,
                                    int64_t dilation, c10::string_view border) {
  TORCH_CHECK(kernel_size >= 1, op, ": kernel_size must be >= 1, got ", kernel_size);
  TORCH_CHECK(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
  const NeighbourhoodGeometry g{height, width, in_height, in_width, kernel_size, dilation,
                                parse_border(border)};
  TORCH_CHECK(in_height >= 1 && in_width >= 1, op,
              ": the low-res map must have a non-empty spatial size, got (", in_height, ", ",
              in_width, ")");
  TORCH_CHECK(g.border != NeighbourhoodBorder::Shift ||
                  (kernel_size * dilation <= in_height && kernel_size * dilation <= in_width),
              op, ": border 'shift' needs kernel_size * dilation = ", kernel_size * dilation,
              " <= the low-res map's height and width (", in_height, ", ", in_width, ")");
  return g;
}

int64_t kernel_size_of(const char* op, const at::Tensor& attn) {
  int64_t k = 1;
  while (k * k < attn.size(1)) ++k;
  TORCH_CHECK(k * k == attn.size(1), op, ": attn must have k*k channels, got ", attn.size(1));
  return k;
}

}  // namespace

at::Tensor neighbourhood_attention_scores(const at::Tensor& queries, const at::Tensor& keys,
                                          int64_t kernel_size, int64_t dilation,
                                          c10::string_view border) {
  const char* op = "neighbourhood_attention_scores";
  check_pair(op, "queries", queries, "keys", keys);
  TORCH_CHECK(keys.size(1) == queries.size(1), op, ": keys must have ", queries.size(1),
              " channels like queries, got ", keys.size(1));
  const NeighbourhoodGeometry g = make_geometry(op, queries.size(2), queries.size(3),
                                                keys.size(2), keys.size(3), kernel_size,
                                                dilation, border);
  at::Tensor out = at::empty({queries.size(0), g.taps(), g.height, g.width}, queries.options());
  if (out.numel() == 0) return out;
  if (queries.size(1) == 0) return out.zero_();
  FEATUP_NEIGHBOURHOOD_LAUNCH(neighbourhood_scores, out)(queries.contiguous(), keys.contiguous(),
                                                        out, g);
  return out;
}

at::Tensor neighbourhood_attention_aggregate(const at::Tensor& attn, const at::Tensor& values,
                                             int64_t dilation, c10::string_view border) {
  const char* op = "neighbourhood_attention_aggregate";
  check_pair(op, "attn", attn, "values", values);
  const NeighbourhoodGeometry g = make_geometry(op, attn.size(2), attn.size(3), values.size(2),
                                                values.size(3), kernel_size_of(op, attn),
                                                dilation, border);
  at::Tensor out = at::empty({values.size(0), values.size(1), g.height, g.width},
                             values.options());
  if (out.numel() == 0) return out;
  FEATUP_NEIGHBOURHOOD_LAUNCH(neighbourhood_aggregate, out)(attn.contiguous(),
                                                           values.contiguous(), out, g);
  return out;
}

at::Tensor neighbourhood_attention_transpose(const at::Tensor& attn, const at::Tensor& features,
                                             at::IntArrayRef input_size, int64_t dilation,
                                             c10::string_view border) {
  const char* op = "neighbourhood_attention_transpose";
  check_pair(op, "attn", attn, "features", features);
  TORCH_CHECK(input_size.size() == 2, op, ": input_size must be (h, w), got ", input_size);
  TORCH_CHECK(features.size(2) == attn.size(2) && features.size(3) == attn.size(3), op,
              ": features must have the spatial size (", attn.size(2), ", ", attn.size(3),
              ") of attn, got ", features.sizes());
  const NeighbourhoodGeometry g = make_geometry(op, attn.size(2), attn.size(3), input_size[0],
                                                input_size[1], kernel_size_of(op, attn),
                                                dilation, border);
  at::Tensor out = at::empty({features.size(0), features.size(1), g.in_height, g.in_width},
                             features.options());
  if (out.numel() == 0) return out;
  if (g.plane() == 0) return out.zero_();
  FEATUP_NEIGHBOURHOOD_LAUNCH(neighbourhood_transpose, out)(attn.contiguous(),
                                                           features.contiguous(), out, g);
  return out;
}

}  // namespace featup_mmseg
