// CPU launchers of the fused JBU range kernel.
//
// The window dot products come from the correlation's vectorised launcher
// (window_ops_cpu.cpp), written into the output itself; one pass over the pixels, split
// over rows (b, y) with at::parallel_for, then turns each pixel's taps into its normalised
// kernel in place (common/range_kernel_math.h). The backward recomputes the dot products,
// turns them in place into their gradients in the same way, and hands those to the
// correlation's backward launcher, which gathers both the centre's and the neighbours'
// share of the keys' gradient. The gradients of scale and spatial are summed per row, then
// over the rows in a fixed order: the same bits whatever the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../range_kernel.h"

namespace featup_mmseg {
namespace {

// Rows of a parallel task: at least about 2^15 multiply-adds each.
int64_t grain(int64_t row_cost) {
  constexpr int64_t kMinTaskCost = int64_t(1) << 15;
  return std::max<int64_t>(1, kMinTaskCost / std::max<int64_t>(row_cost, 1));
}

// The inputs both passes read.
template <typename scalar_t>
struct RangeArgs {
  const scalar_t* norms;  // |Q|^2 (B, 1, H, W), 'gaussian_euclidean' only
  const scalar_t* spatial;
  scalar_t scale;
  RangeVariant variant;
  WindowGeometry g;
};

// For pixel (n, y, x): its taps' neighbour norms into window; returns its own norm.
template <typename scalar_t>
scalar_t pixel_norms(scalar_t* window, const RangeArgs<scalar_t>& args, int64_t n, int64_t y,
                     int64_t x) {
  if (args.variant != RangeVariant::GaussianEuclidean) return scalar_t(0);
  const scalar_t* norms = args.norms + n * args.g.plane();
  gather_window_norms(window, norms, args.g, y, x);
  return norms[y * args.g.width + x];
}

// The k*k planes of a (B, k*k, H, W) map are H*W elements apart, which at power-of-two
// sizes maps a pixel's taps onto the same L1 sets: each output row first loads its k*k
// rows into contiguous scratch (rows[p * W + x]), and stores them back once written.
template <typename scalar_t>
void load_tap_rows(scalar_t* rows, const scalar_t* map, const WindowGeometry& g, int64_t n,
                   int64_t y) {
  const scalar_t* first = map + n * g.taps() * g.plane() + y * g.width;
  for (int64_t p = 0; p < g.taps(); ++p) {
    std::copy(first + p * g.plane(), first + p * g.plane() + g.width, rows + p * g.width);
  }
}

template <typename scalar_t>
void store_tap_rows(scalar_t* map, const scalar_t* rows, const WindowGeometry& g, int64_t n,
                    int64_t y) {
  scalar_t* first = map + n * g.taps() * g.plane() + y * g.width;
  for (int64_t p = 0; p < g.taps(); ++p) {
    std::copy(rows + p * g.width, rows + (p + 1) * g.width, first + p * g.plane());
  }
}

// dots (B, k*k, H, W) -> K in place, rows [begin, end) of B * H.
template <typename scalar_t>
void normalize_rows(scalar_t* dots, const RangeArgs<scalar_t>& args, int64_t begin, int64_t end) {
  const WindowGeometry& g = args.g;
  const int64_t taps = g.taps();
  std::vector<scalar_t> values(taps), window(taps), rows(taps * g.width);
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, y = index % g.height;
    load_tap_rows(rows.data(), dots, g, n, y);
    for (int64_t x = 0; x < g.width; ++x) {
      scalar_t* pixel = rows.data() + x;
      for (int64_t p = 0; p < taps; ++p) values[p] = pixel[p * g.width];
      const scalar_t centre_norm = pixel_norms(window.data(), args, n, y, x);
      normalized_range_pixel(pixel, g.width, values.data(), taps, args.variant, args.scale,
                             args.spatial, centre_norm, window.data());
    }
    store_tap_rows(dots, rows.data(), g, n, y);
  }
}

// dots (B, k*k, H, W) -> their gradients in place for the gradient grad of K, rows
// [begin, end) of B * H; distance_grad and norm_grad (the centre norm's share, (B, 1, H, W))
// for 'gaussian_euclidean'; partials[row] = (scale's share, spatial's k*k shares).
template <typename scalar_t>
void backward_rows(scalar_t* dots, const scalar_t* grad, scalar_t* distance_grad,
                   scalar_t* norm_grad, scalar_t* partials, const RangeArgs<scalar_t>& args,
                   int64_t begin, int64_t end) {
  const WindowGeometry& g = args.g;
  const int64_t taps = g.taps(), plane = g.plane(), width = g.width;
  std::vector<scalar_t> values(taps), scratch(2 * taps), window(taps);
  std::vector<scalar_t> dot_rows(taps * width), grad_rows(taps * width);
  std::vector<scalar_t> distance_rows(distance_grad == nullptr ? 0 : taps * width);
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, y = index % g.height;
    scalar_t* row_partials = partials + index * (1 + taps);
    std::fill(row_partials, row_partials + 1 + taps, scalar_t(0));
    load_tap_rows(dot_rows.data(), dots, g, n, y);
    load_tap_rows(grad_rows.data(), grad, g, n, y);
    for (int64_t x = 0; x < width; ++x) {
      scalar_t* pixel = dot_rows.data() + x;
      for (int64_t p = 0; p < taps; ++p) values[p] = pixel[p * width];
      const scalar_t centre_norm = pixel_norms(window.data(), args, n, y, x);
      const scalar_t centre_share = normalized_range_pixel_backward(
          values.data(), scratch.data(), grad_rows.data() + x, width, taps, args.variant,
          args.scale, args.spatial, centre_norm, window.data(),
          distance_grad == nullptr ? nullptr : distance_rows.data() + x, row_partials,
          row_partials + 1);
      for (int64_t p = 0; p < taps; ++p) pixel[p * width] = values[p];
      if (norm_grad != nullptr) norm_grad[n * plane + y * width + x] = centre_share;
    }
    store_tap_rows(dots, dot_rows.data(), g, n, y);
    if (distance_grad != nullptr) store_tap_rows(distance_grad, distance_rows.data(), g, n, y);
  }
}

// grad_keys += 2 Q * (the gradient of |Q|^2: norm_gradient_share of the centre share
// norm_grad), rows [begin, end) of B * H.
template <typename scalar_t>
void add_norm_gradient_rows(scalar_t* grad_keys, const scalar_t* keys,
                            const scalar_t* distance_grad, const scalar_t* norm_grad,
                            int64_t channels, const WindowGeometry& g, int64_t begin,
                            int64_t end) {
  const int64_t plane = g.plane();
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / g.height, ys = index % g.height;
    const scalar_t* taps = distance_grad + n * g.taps() * plane;
    for (int64_t xs = 0; xs < g.width; ++xs) {
      const scalar_t share =
          norm_gradient_share(taps, norm_grad[n * plane + ys * g.width + xs], g, ys, xs);
      const int64_t at = n * channels * plane + ys * g.width + xs;
      for (int64_t c = 0; c < channels; ++c) {
        grad_keys[at + c * plane] += scalar_t(2) * keys[at + c * plane] * share;
      }
    }
  }
}

// The window dot products of keys into dots (B, k*k, H, W).
void window_dots(const at::Tensor& keys, at::Tensor& dots, const WindowGeometry& g) {
  if (keys.size(1) == 0) {  // no channels: the launcher needs some
    dots.zero_();
  } else {
    window_correlate_cpu(keys, keys, dots, g);
  }
}

// |Q|^2 (B, 1, H, W) for 'gaussian_euclidean', summed as the unfused composition sums it.
at::Tensor squared_norms(const at::Tensor& keys, RangeVariant variant) {
  return variant == RangeVariant::GaussianEuclidean ? keys.square().sum(1, true) : at::Tensor();
}

// The scale and the spatial kernel from the parameters (CPU tensors: read directly).
template <typename scalar_t>
RangeArgs<scalar_t> range_args(const at::Tensor& norms, const at::Tensor& range_param,
                               const at::Tensor& sigma_spatial, RangeVariant variant,
                               const WindowGeometry& g, std::vector<scalar_t>& spatial) {
  const scalar_t sigma = *sigma_spatial.const_data_ptr<scalar_t>();
  spatial.resize(g.taps());
  for (int64_t p = 0; p < g.taps(); ++p) spatial[p] = spatial_tap(p, g.size(), sigma);
  return {norms.defined() ? norms.const_data_ptr<scalar_t>() : nullptr, spatial.data(),
          range_scale(variant, *range_param.const_data_ptr<scalar_t>()), variant, g};
}

}  // namespace

void normalized_range_kernel_cpu(const at::Tensor& keys, const at::Tensor& range_param,
                                 const at::Tensor& sigma_spatial, RangeVariant variant,
                                 at::Tensor& out, const WindowGeometry& g) {
  window_dots(keys, out, g);
  const at::Tensor norms = squared_norms(keys, variant);
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "normalized_range_kernel_cpu", [&] {
    std::vector<scalar_t> spatial;
    const RangeArgs<scalar_t> args =
        range_args<scalar_t>(norms, range_param, sigma_spatial, variant, g, spatial);
    scalar_t* dots = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, keys.size(0) * g.height, grain(8 * g.taps() * g.width),
                     [&](int64_t begin, int64_t end) { normalize_rows(dots, args, begin, end); });
  });
}

void normalized_range_kernel_backward_cpu(const at::Tensor& grad, const at::Tensor& keys,
                                          const at::Tensor& range_param,
                                          const at::Tensor& sigma_spatial, RangeVariant variant,
                                          at::Tensor& grad_keys, at::Tensor& grad_range_param,
                                          at::Tensor& grad_sigma_spatial,
                                          const WindowGeometry& g) {
  const int64_t batch = keys.size(0), rows = batch * g.height, taps = g.taps();
  at::Tensor dots = at::empty({batch, taps, g.height, g.width}, keys.options());
  window_dots(keys, dots, g);
  const at::Tensor norms = squared_norms(keys, variant);
  const bool euclidean = variant == RangeVariant::GaussianEuclidean;
  at::Tensor distance_grad = euclidean ? at::empty_like(dots) : at::Tensor();
  at::Tensor norm_grad = euclidean ? at::empty_like(norms) : at::Tensor();
  at::Tensor partials = at::empty({rows, 1 + taps}, keys.options());
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "normalized_range_kernel_backward_cpu", [&] {
    std::vector<scalar_t> spatial;
    const RangeArgs<scalar_t> args =
        range_args<scalar_t>(norms, range_param, sigma_spatial, variant, g, spatial);
    scalar_t* dots_ptr = dots.mutable_data_ptr<scalar_t>();
    scalar_t* distance_ptr = euclidean ? distance_grad.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* norm_ptr = euclidean ? norm_grad.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* partials_ptr = partials.mutable_data_ptr<scalar_t>();
    const scalar_t* grad_ptr = grad.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain(12 * taps * g.width), [&](int64_t begin, int64_t end) {
      backward_rows(dots_ptr, grad_ptr, distance_ptr, norm_ptr, partials_ptr, args, begin, end);
    });
    // the rows' shares, summed in row order in double, then through the chain rule to the
    // parameters
    std::vector<double> sums(1 + taps, 0.0);
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t t = 0; t <= taps; ++t) sums[t] += double(partials_ptr[row * (1 + taps) + t]);
    }
    const scalar_t param = *range_param.const_data_ptr<scalar_t>();
    const scalar_t sigma = *sigma_spatial.const_data_ptr<scalar_t>();
    double sigma_grad = 0.0;
    for (int64_t p = 0; p < taps; ++p) {
      sigma_grad += sums[1 + p] * double(spatial_tap_derivative(p, g.size(), sigma));
    }
    grad_range_param.fill_(sums[0] * double(range_scale_derivative(variant, param)));
    grad_sigma_spatial.fill_(sigma_grad);
  });
  if (keys.size(1) == 0) return;
  window_correlation_backward_cpu(dots, keys, grad_keys, g);
  if (!euclidean) return;
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "normalized_range_kernel_norms_cpu", [&] {
    scalar_t* out = grad_keys.mutable_data_ptr<scalar_t>();
    const scalar_t* keys_ptr = keys.const_data_ptr<scalar_t>();
    const scalar_t* distance_ptr = distance_grad.const_data_ptr<scalar_t>();
    const scalar_t* norm_ptr = norm_grad.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain((2 * taps + keys.size(1)) * g.width),
                     [&](int64_t begin, int64_t end) {
                       add_norm_gradient_rows(out, keys_ptr, distance_ptr, norm_ptr,
                                              keys.size(1), g, begin, end);
                     });
  });
}

}  // namespace featup_mmseg
