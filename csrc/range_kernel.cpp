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
  const WindowGeometry g = make_geometry(op, keys, kernel_size, padding_mode);
  for (const auto& named : {std::make_pair("range_param", &range_param),
                            std::make_pair("sigma_spatial", &sigma_spatial)}) {
    const at::Tensor& t = *named.second;
    TORCH_CHECK(t.device() == keys.device() && at::isFloatingType(t.scalar_type()) &&
                    t.dim() == 0,
                op, ": ", named.first, " must be a 0-dim floating tensor on ", keys.device(),
                " like keys, got shape ", t.sizes(), ", ", t.scalar_type(), " on ",
                t.device());
  }
  return g;
}

// The dtype the kernels compute in: float64 for float64 keys, else float32 (half-precision
// keys feed a sharp softmax or exponential: compared in float32).
at::ScalarType compute_type(const at::Tensor& keys) {
  return keys.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
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
  const at::ScalarType type = compute_type(keys);
  at::Tensor out = at::empty({keys.size(0), g.taps(), g.height, g.width},
                             keys.options().dtype(type));
  if (out.numel() > 0) {
    FEATUP_RANGE_LAUNCH(normalized_range_kernel, keys.device(), keys.to(type).contiguous(),
                        range_param.to(type), sigma_spatial.to(type), range_variant, out, g);
  }
  return out.to(keys.scalar_type());
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
  TORCH_CHECK(grad.device() == keys.device(), op, ": grad must be on ", keys.device(),
              " like keys, got ", grad.device());
  TORCH_CHECK(grad.size(0) == keys.size(0) && grad.size(1) == g.taps() &&
                  grad.size(2) == g.height && grad.size(3) == g.width,
              op, ": grad must have shape (", keys.size(0), ", ", g.taps(), ", ", g.height, ", ",
              g.width, "), got ", grad.sizes());
  const at::ScalarType type = compute_type(keys);
  const at::Tensor keys_c = keys.to(type).contiguous();
  at::Tensor grad_keys = at::empty_like(keys_c);
  at::Tensor grad_range_param = at::empty({}, keys_c.options());
  at::Tensor grad_sigma_spatial = at::empty({}, keys_c.options());
  if (grad.numel() == 0) {
    grad_keys.zero_();
    grad_range_param.zero_();
    grad_sigma_spatial.zero_();
  } else {
    FEATUP_RANGE_LAUNCH(normalized_range_kernel_backward, keys.device(),
                        grad.to(type).contiguous(), keys_c, range_param.to(type),
                        sigma_spatial.to(type), range_variant, grad_keys, grad_range_param,
                        grad_sigma_spatial, g);
  }
  // each gradient in its input's dtype
  return {grad_keys.to(keys.scalar_type()), grad_range_param.to(range_param.scalar_type()),
          grad_sigma_spatial.to(sigma_spatial.scalar_type())};
}

}  // namespace featup_mmseg
