// Argument checks, output allocation and device dispatch of the window ops.
// The Python API (featup_mmseg/ops) checks arguments first with friendlier messages;
// these checks keep direct torch.ops calls from reaching a kernel with bad shapes.
#include "window_ops.h"

#include <string>

namespace featup_mmseg {
namespace {

// The CPU and CUDA launchers of one primitive (window_ops.h).
struct Launcher {
  using Fn = void (*)(const at::Tensor&, const at::Tensor&, at::Tensor&, const WindowGeometry&);
  Fn cpu;
  Fn cuda;

  void operator()(const at::Tensor& lhs, const at::Tensor& rhs, at::Tensor& out,
                  const WindowGeometry& g) const {
    (out.is_cuda() ? cuda : cpu)(lhs, rhs, out, g);
  }
};

#ifdef WITH_CUDA
#define FEATUP_LAUNCHER(name) (Launcher{&name##_cpu, &name##_cuda})
#else
// Without CUDA kernels no CUDA implementation is registered, so .cuda is never called.
#define FEATUP_LAUNCHER(name) (Launcher{&name##_cpu, nullptr})
#endif

// Checks that `other` lives with `reference` and shares its batch and spatial size.
void check_companion(const char* op, const char* ref_name, const at::Tensor& reference,
                     const char* name, const at::Tensor& other) {
  check_map(op, name, other);
  TORCH_CHECK(other.device() == reference.device(), op, ": ", name, " is on ", other.device(),
              " but ", ref_name, " is on ", reference.device());
  TORCH_CHECK(other.scalar_type() == reference.scalar_type(), op, ": ", name, " has dtype ",
              other.scalar_type(), " but ", ref_name, " has dtype ", reference.scalar_type());
  TORCH_CHECK(other.size(0) == reference.size(0) && other.size(2) == reference.size(2) &&
                  other.size(3) == reference.size(3),
              op, ": ", name, " must have batch and spatial size (", reference.size(0), ", *, ",
              reference.size(2), ", ", reference.size(3), ") like ", ref_name, ", got ",
              other.sizes());
}

int64_t kernel_size_from_taps(const char* op, int64_t taps) {
  int64_t k = 1;
  while (k * k < taps) k += 2;
  TORCH_CHECK(k * k == taps, op, ": kernel must have k*k channels for an odd k (9, 25, 49, ...),",
              " got ", taps);
  return k;
}

// The result of an op that writes into a caller's tensor (`into`, or else a new one of
// `like`'s dtype and device): contiguous, of that shape, dtype and device.
at::Tensor output(const char* op, at::IntArrayRef sizes, const at::Tensor& like,
                  const at::Tensor* into) {
  if (into == nullptr) return at::empty(sizes, like.options());
  TORCH_CHECK(into->device() == like.device() && into->scalar_type() == like.scalar_type(), op,
              ": out must be a ", like.scalar_type(), " tensor on ", like.device(), ", got ",
              into->scalar_type(), " on ", into->device());
  TORCH_CHECK(into->sizes() == sizes, op, ": out must have shape ", sizes, ", got ",
              into->sizes());
  TORCH_CHECK(into->is_contiguous(), op, ": out must be contiguous");
  return *into;
}

// out (B, k*k, H, W) = correlation of a (B, C, H, W) with the k x k windows of b; into
// `into` where given, added to it with accumulate.
at::Tensor correlate(const char* op, const char* a_name, const at::Tensor& a, const char* b_name,
                     const at::Tensor& b, int64_t kernel_size, c10::string_view padding_mode,
                     const at::Tensor* into = nullptr, bool accumulate = false) {
  check_map(op, b_name, b);
  check_companion(op, b_name, b, a_name, a);
  TORCH_CHECK(a.size(1) == b.size(1), op, ": ", a_name, " must have ", b.size(1),
              " channels like ", b_name, ", got ", a.size(1));
  const WindowGeometry g = make_geometry(op, b, kernel_size, padding_mode);
  at::Tensor out = output(op, {b.size(0), g.taps(), g.height, g.width}, b, into);
  if (out.numel() == 0) return out;
  // No channels to sum over (the launchers never see an empty input: see below).
  if (a.size(1) == 0) return accumulate ? out : out.zero_();
  if (accumulate && out.is_cuda()) return out.add_(correlate(op, a_name, a, b_name, b,
                                                             kernel_size, padding_mode));
  if (accumulate) {
    window_correlate_accumulate_cpu(a.contiguous(), b.contiguous(), out, g);
  } else {
    FEATUP_LAUNCHER(window_correlate)(a.contiguous(), b.contiguous(), out, g);
  }
  return out;
}

// out (B, C, H, W) from a per-pixel kernel (B, k*k, H, W) acting on planes (B, C, H, W);
// into `into` where given.
at::Tensor kernel_over_planes(const char* op, const char* planes_name, const at::Tensor& planes,
                              const at::Tensor& kernel, c10::string_view padding_mode,
                              const Launcher& launcher, const at::Tensor* into = nullptr) {
  check_map(op, planes_name, planes);
  check_companion(op, planes_name, planes, "kernel", kernel);
  const int64_t k = kernel_size_from_taps(op, kernel.size(1));
  const WindowGeometry g = make_geometry(op, planes, k, padding_mode);
  const at::Tensor planes_c = planes.contiguous();
  at::Tensor out = output(op, planes_c.sizes(), planes_c, into);
  if (out.numel() == 0) return out;
  launcher(kernel.contiguous(), planes_c, out, g);
  return out;
}

}  // namespace

PaddingMode parse_padding_mode(c10::string_view name) {
  if (name == "reflect") return PaddingMode::Reflect;
  if (name == "zeros") return PaddingMode::Zeros;
  if (name == "replicate") return PaddingMode::Replicate;
  TORCH_CHECK(false, "padding_mode must be 'reflect', 'zeros' or 'replicate', got '",
              std::string(name), "'");
}

// Launchers are only called for non-empty outputs: on a zero-width or zero-height map the
// border mapping has no source index to return, so callers return before launching.
WindowGeometry make_geometry(const char* op, const at::Tensor& t, int64_t kernel_size,
                             c10::string_view padding_mode) {
  TORCH_CHECK(kernel_size > 0 && kernel_size % 2 == 1, op,
              ": kernel_size must be a positive odd number, got ", kernel_size);
  const WindowGeometry g{t.size(2), t.size(3), kernel_size / 2, parse_padding_mode(padding_mode)};
  TORCH_CHECK(g.mode != PaddingMode::Reflect || (g.radius < g.height && g.radius < g.width), op,
              ": reflect padding needs kernel_size // 2 < H and < W, got kernel_size ",
              kernel_size, " for spatial size (", g.height, ", ", g.width, ")");
  return g;
}

void check_map(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be a 4-D (B, C, H, W) tensor, got shape ",
              t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be float64, float32, float16 or bfloat16, got ", t.scalar_type());
}

at::Tensor window_correlation(const at::Tensor& keys, int64_t kernel_size,
                              c10::string_view padding_mode) {
  return correlate("window_correlation", "keys", keys, "keys", keys, kernel_size, padding_mode);
}

at::Tensor window_correlation_backward(const at::Tensor& grad, const at::Tensor& keys,
                                       int64_t kernel_size, c10::string_view padding_mode) {
  const char* op = "window_correlation_backward";
  check_map(op, "keys", keys);
  check_companion(op, "keys", keys, "grad", grad);
  const WindowGeometry g = make_geometry(op, keys, kernel_size, padding_mode);
  TORCH_CHECK(grad.size(1) == g.taps(), op, ": grad must have ", g.taps(), " channels, got ",
              grad.size(1));
  const at::Tensor keys_c = keys.contiguous();
  at::Tensor out = at::empty_like(keys_c);
  if (out.numel() == 0) return out;
  FEATUP_LAUNCHER(window_correlation_backward)(grad.contiguous(), keys_c, out, g);
  return out;
}

at::Tensor adaptive_conv(const at::Tensor& features, const at::Tensor& kernel,
                         c10::string_view padding_mode) {
  return kernel_over_planes("adaptive_conv", "features", features, kernel, padding_mode,
                            FEATUP_LAUNCHER(window_aggregate));
}

at::Tensor adaptive_conv_backward_features(const at::Tensor& grad, const at::Tensor& kernel,
                                           c10::string_view padding_mode) {
  return kernel_over_planes("adaptive_conv_backward_features", "grad", grad, kernel,
                            padding_mode, FEATUP_LAUNCHER(window_aggregate_adjoint));
}

at::Tensor adaptive_conv_backward_kernel(const at::Tensor& grad, const at::Tensor& features,
                                         int64_t kernel_size, c10::string_view padding_mode) {
  return correlate("adaptive_conv_backward_kernel", "grad", grad, "features", features,
                   kernel_size, padding_mode);
}

void adaptive_conv_out(const at::Tensor& features, const at::Tensor& kernel,
                       c10::string_view padding_mode, at::Tensor& out) {
  kernel_over_planes("adaptive_conv_out", "features", features, kernel, padding_mode,
                     FEATUP_LAUNCHER(window_aggregate), &out);
}

void adaptive_conv_backward_kernel_out(const at::Tensor& grad, const at::Tensor& features,
                                       int64_t kernel_size, c10::string_view padding_mode,
                                       at::Tensor& out, bool accumulate) {
  correlate("adaptive_conv_backward_kernel_out", "grad", grad, "features", features,
            kernel_size, padding_mode, &out, accumulate);
}

}  // namespace featup_mmseg
