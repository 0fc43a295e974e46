// Argument checks, output allocation and device dispatch of the fused JBU range kernel.
// The Python API (featup_mmseg/ops) checks arguments first with friendlier messages;
// these checks keep direct torch.ops calls from reaching a kernel with bad shapes.
#include "range_kernel.h"

#include <string>
#include <utility>

namespace featup_mmseg {
namespace {

RangeVariant parse_variant(c10::string_view name) {
  if (name == "softmax") return RangeVariant::Softmax;
  if (name == "gaussian_euclidean") return RangeVariant::GaussianEuclidean;
  if (name == "gaussian_cosine") return RangeVariant::GaussianCosine;
  TORCH_CHECK(false, "variant must be 'softmax', 'gaussian_euclidean' or 'gaussian_cosine', "
              "got '", std::string(name), "'");
}

// Checks keys, scale and spatial; returns the window geometry.
WindowGeometry check_range_arguments(const char* op, const at::Tensor& keys,
                                     const at::Tensor& scale, const at::Tensor& spatial,
                                     int64_t kernel_size, c10::string_view padding_mode) {
  check_map(op, "keys", keys);
  TORCH_CHECK(keys.scalar_type() == at::kFloat || keys.scalar_type() == at::kDouble, op,
              ": keys must be float32 or float64, got ", keys.scalar_type());
  const WindowGeometry g = make_geometry(op, keys, kernel_size, padding_mode);
  for (const auto& named : {std::make_pair("scale", &scale), std::make_pair("spatial", &spatial)}) {
    const at::Tensor& t = *named.second;
    TORCH_CHECK(t.device() == keys.device() && t.scalar_type() == keys.scalar_type(), op, ": ",
                named.first, " must be a ", keys.scalar_type(), " tensor on ", keys.device(),
                " like keys, got ", t.scalar_type(), " on ", t.device());
  }
  TORCH_CHECK(scale.dim() == 0, op, ": scale must be a 0-dim tensor, got shape ", scale.sizes());
  TORCH_CHECK(spatial.dim() == 1 && spatial.size(0) == g.taps(), op, ": spatial must have shape (",
              g.taps(), ",) (k*k taps), got ", spatial.sizes());
  return g;
}

}  // namespace

at::Tensor normalized_range_kernel(const at::Tensor& keys, const at::Tensor& scale,
                                   const at::Tensor& spatial, int64_t kernel_size,
                                   c10::string_view variant, c10::string_view padding_mode) {
  const char* op = "normalized_range_kernel";
  const WindowGeometry g = check_range_arguments(op, keys, scale, spatial, kernel_size,
                                                 padding_mode);
  const RangeVariant range_variant = parse_variant(variant);
  at::Tensor out = at::empty({keys.size(0), g.taps(), g.height, g.width}, keys.options());
  if (out.numel() == 0) return out;
  normalized_range_kernel_cpu(keys.contiguous(), scale, spatial.contiguous(), range_variant, out,
                              g);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> normalized_range_kernel_backward(
    const at::Tensor& grad, const at::Tensor& keys, const at::Tensor& scale,
    const at::Tensor& spatial, int64_t kernel_size, c10::string_view variant,
    c10::string_view padding_mode) {
  const char* op = "normalized_range_kernel_backward";
  const WindowGeometry g = check_range_arguments(op, keys, scale, spatial, kernel_size,
                                                 padding_mode);
  const RangeVariant range_variant = parse_variant(variant);
  check_map(op, "grad", grad);
  TORCH_CHECK(grad.device() == keys.device() && grad.scalar_type() == keys.scalar_type(), op,
              ": grad must be a ", keys.scalar_type(), " tensor on ", keys.device(),
              " like keys, got ", grad.scalar_type(), " on ", grad.device());
  TORCH_CHECK(grad.size(0) == keys.size(0) && grad.size(1) == g.taps() &&
                  grad.size(2) == g.height && grad.size(3) == g.width,
              op, ": grad must have shape (", keys.size(0), ", ", g.taps(), ", ", g.height, ", ",
              g.width, "), got ", grad.sizes());
  const at::Tensor keys_c = keys.contiguous();
  at::Tensor grad_keys = at::empty_like(keys_c);
  at::Tensor grad_scale = at::zeros({}, keys.options());
  at::Tensor grad_spatial = at::zeros({g.taps()}, keys.options());
  if (grad.numel() == 0) return {grad_keys, grad_scale, grad_spatial};
  normalized_range_kernel_backward_cpu(grad.contiguous(), keys_c, scale, spatial.contiguous(),
                                       range_variant, grad_keys, grad_scale, grad_spatial, g);
  return {grad_keys, grad_scale, grad_spatial};
}

}  // namespace featup_mmseg
