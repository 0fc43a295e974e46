// Argument checks, output allocation and dispatch of the dropout ops. The Python API
// (featup_mmseg/ops/dropout_ops.py) checks arguments first with friendlier messages; these
// checks keep direct torch.ops calls from reaching a kernel with bad shapes.
#include "dropout_ops.h"

namespace featup_mmseg {
namespace {

void check_masked_dot_args(const char* op, const at::Tensor& x, const at::Tensor& keep,
                           const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be 3-D (B, P, C), got ", x.sizes());
  TORCH_CHECK(x.is_floating_point(), op, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.stride(2) == 1 || x.size(2) <= 1, op, ": x must have a unit channel stride");
  TORCH_CHECK(keep.sizes() == x.sizes() && keep.scalar_type() == at::kBool, op,
              ": keep must be a bool tensor of x's shape ", x.sizes(), ", got ",
              keep.scalar_type(), " ", keep.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(2) &&
                  weight.scalar_type() == x.scalar_type() && weight.is_contiguous(),
              op, ": weight must be a contiguous (C,) = (", x.size(2), ",) tensor of x's dtype");
  TORCH_CHECK(x.device().is_cpu() && keep.device().is_cpu() && weight.device().is_cpu(), op,
              ": x, keep and weight must be CPU tensors");
}

}  // namespace

void bernoulli_out(at::Tensor& out, double p) {
  TORCH_CHECK(out.scalar_type() == at::kBool && out.is_contiguous() && out.device().is_cpu(),
              "bernoulli_out: out must be a contiguous bool CPU tensor");
  TORCH_CHECK(p >= 0.0 && p <= 1.0, "bernoulli_out: p must be in [0, 1], got ", p);
  bernoulli_fill_cpu(out.data_ptr<bool>(), out.numel(), p);
}

at::Tensor masked_dot(const at::Tensor& x, const at::Tensor& keep, const at::Tensor& weight) {
  check_masked_dot_args("masked_dot", x, keep, weight);
  at::Tensor out = at::empty({x.size(0), x.size(1)}, x.options());
  if (out.numel() > 0) masked_dot_cpu(x, keep, weight, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> masked_dot_backward(const at::Tensor& grad,
                                                       const at::Tensor& x,
                                                       const at::Tensor& keep,
                                                       const at::Tensor& weight,
                                                       std::array<bool, 2> output_mask) {
  check_masked_dot_args("masked_dot_backward", x, keep, weight);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({x.size(0), x.size(1)}) &&
                  grad.scalar_type() == x.scalar_type() && grad.device().is_cpu(),
              "masked_dot_backward: grad must be a (B, P) = (", x.size(0), ", ", x.size(1),
              ") CPU tensor of x's dtype, got ", grad.sizes());
  at::Tensor grad_x, grad_weight;
  if (output_mask[0]) grad_x = at::empty(x.sizes(), x.options());
  if (output_mask[1]) grad_weight = at::zeros_like(weight);
  if (x.numel() > 0 && (output_mask[0] || output_mask[1])) {
    masked_dot_backward_cpu(grad.contiguous(), x, keep, weight,
                            output_mask[0] ? &grad_x : nullptr,
                            output_mask[1] ? &grad_weight : nullptr);
  }
  return {grad_x, grad_weight};
}

}  // namespace featup_mmseg
