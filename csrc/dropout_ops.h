// Device-independent entry points of the dropout ops (dropout_ops.cpp) and the CPU
// launchers they call (cpu/). They serve a dropout followed by a linear map to one output
// (FeatUp's attention downsampler), without the float mask or the dropped features.
#pragma once

#include <ATen/ATen.h>

namespace featup_mmseg {

// Ops registered with the dispatcher (schemas in bindings.cpp), CPU only.
// Fills the bool tensor out (contiguous) in memory order with Bernoulli(p) draws from the
// default CPU generator: the numbers torch's own serial bernoulli_ draws, in its order.
void bernoulli_out(at::Tensor& out, double p);
// x (B, P, C) with unit channel stride, keep (B, P, C) bool at any strides, weight (C,)
// -> (B, P): sum over c of x * weight where keep, 0 elsewhere.
at::Tensor masked_dot(const at::Tensor& x, const at::Tensor& keep, const at::Tensor& weight);
// grad (B, P) -> (grad_x (B, P, C) contiguous or undefined, grad_weight (C,) or undefined),
// as output_mask asks.
std::tuple<at::Tensor, at::Tensor> masked_dot_backward(const at::Tensor& grad,
                                                       const at::Tensor& x,
                                                       const at::Tensor& keep,
                                                       const at::Tensor& weight,
                                                       std::array<bool, 2> output_mask);

void bernoulli_fill_cpu(bool* out, int64_t numel, double p);
void masked_dot_cpu(const at::Tensor& x, const at::Tensor& keep, const at::Tensor& weight,
                    at::Tensor& out);
void masked_dot_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                             const at::Tensor& keep, const at::Tensor& weight,
                             at::Tensor* grad_x, at::Tensor* grad_weight);

}  // namespace featup_mmseg
