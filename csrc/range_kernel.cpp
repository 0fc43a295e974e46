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

// Checks keys, range_param and sigma_spatial; returns the window geometry.
WindowGeometry check_range_arguments(const char* op, const at::Tensor& keys,
                                     const at::Tensor& range_param,
                                     const at::Tensor& sigma_spatial, int64_t kernel_size,
                                     c10::string_view padding_mode) {
  check_map(op, "keys", keys);
  TORCH_CHECK(keys.scalar_type() == at::kFloat || keys.scalar_type() == at::kDouble, op,
              ": keys must be float32 or float64, got ", keys.scalar_type());
  const WindowGeometry g = make_geometry(op, keys, kernel_size, padding_mode);
  for (const auto& named : {std::make_pair("range_param", &range_param),
                            std::make_pair("sigma_spatial", &sigma_spatial)}) {
    const at::Tensor& t = *named.second;
    TORCH_CHECK(t.device() == keys.device() && t.scalar_type() == keys.scalar_type() &&
                    t.dim() == 0,
                op, ": ", named.first, " must be a 0-dim ", keys.scalar_type(), " tensor on ",
                keys.device(), " like keys, got shape ", t.sizes(), ", ", t.scalar_type(),
                " on ", t.device());
  }
  return g;
}

#ifdef WITH_CUDA
#define FEATUP_RANGE_LAUNCH(name, device, ...) \
  (device.is_cuda() ? name##_cuda(__VA_ARGS__) : name##_cpu(__VA_ARGS__))
#else
// Without CUDA kernels no CUDA implementation is registered.
#define FEATUP_RANGE_LAUNCH(name, device, ...) name##_cpu(__VA_ARGS__)
#endif

}  // namespace

at::Tensor normalized_range_kernel(const at::Tensor& keys, const at::Tensor& range_param,
                                   const at::Tensor& sigma_spatial, int64_t kernel_size,
                                   c10::string_view variant, c10::string_view padding_mode) {
  const char* op = "normalized_range_kernel";
  const WindowGeometry g = check_range_arguments(op, keys, range_param, sigma_spatial,
                                                 kernel_size, padding_mode);
  const RangeVariant range_variant = parse_variant(variant);
  at::Tensor out = at::empty({keys.size(0), g.taps(), g.height, g.width}, keys.options());
  if (out.numel() == 0) return out;
  FEATUP_RANGE_LAUNCH(normalized_range_kernel, keys.device(), keys.contiguous(), range_param,
                      sigma_spatial, range_variant, out, g);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> normalized_range_kernel_backward(
    const at::Tensor& grad, const at::Tensor& keys, const at::Tensor& range_param,
    const at::Tensor& sigma_spatial, int64_t kernel_size, c10::string_view variant,
    c10::string_view padding_mode) {
  const char* op = "normalized_range_kernel_backward";
  const WindowGeometry g = check_range_arguments(op, keys, range_param, sigma_spatial,
                                                 kernel_size, padding_mode);
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
  at::Tensor grad_range_param = at::empty({}, keys.options());
  at::Tensor grad_sigma_spatial = at::empty({}, keys.options());
  if (grad.numel() == 0) {
    grad_keys.zero_();
    grad_range_param.zero_();
    grad_sigma_spatial.zero_();
    return {grad_keys, grad_range_param, grad_sigma_spatial};
  }
  FEATUP_RANGE_LAUNCH(normalized_range_kernel_backward, keys.device(), grad.contiguous(), keys_c,
                      range_param, sigma_spatial, range_variant, grad_keys, grad_range_param,
                      grad_sigma_spatial, g);
  return {grad_keys, grad_range_param, grad_sigma_spatial};
}

}  // namespace featup_mmseg
