"""Pure-PyTorch reference of the window ops (FeatUp's adaptive convolution and its
range-kernel correlation, paper section 3.2), of a JBU stage's normalised range kernel, of
the cross-scale neighbourhood attention ops, of the bicubic resize and of the masked dot
product.

Written the obvious way, with an explicit padded copy and ``F.unfold``: it is the test
oracle for the compiled kernels and the fallback when ``featup_mmseg._ext`` is not built.
It materialises a (B, C, k*k, H, W) tensor, so it is slow and memory-hungry by design.
"""
import math

import torch
import torch.nn.functional as F

_TORCH_PAD_MODES = {'reflect': 'reflect', 'replicate': 'replicate', 'zeros': 'constant'}


def window_patches(x: torch.Tensor, kernel_size: int, padding_mode: str) -> torch.Tensor:
    """Every k x k window of ``x`` (B, C, H, W) as a (B, C, k*k, H, W) tensor.

    Tap p = i*k + j of the window at (y, x) holds x~[y + i - r, x + j - r], where x~ is
    ``x`` extended beyond its borders according to ``padding_mode``.
    """
    batch, channels, height, width = x.shape
    if x.numel() == 0:  # F.unfold rejects empty maps; there is nothing to gather
        return x.unsqueeze(2).expand(batch, channels, kernel_size * kernel_size, height, width)
    radius = kernel_size // 2
    padded = F.pad(x, [radius] * 4, mode=_TORCH_PAD_MODES[padding_mode])
    patches = F.unfold(padded, kernel_size)
    return patches.view(batch, channels, kernel_size * kernel_size, height, width)


def window_correlation_reference(q: torch.Tensor, kernel_size: int = 7,
                                 padding_mode: str = 'reflect') -> torch.Tensor:
    """logits[b, p, y, x] = sum_d q[b, d, y, x] * q~[b, d, y + i - r, x + j - r]."""
    return (window_patches(q, kernel_size, padding_mode) * q.unsqueeze(2)).sum(1)


def window_cross_correlation_reference(queries: torch.Tensor, keys: torch.Tensor,
                                       kernel_size: int = 7,
                                       padding_mode: str = 'reflect') -> torch.Tensor:
    """logits[b, p, y, x] = sum_d queries[b, d, y, x] * keys~[b, d, y + i - r, x + j - r]."""
    return (window_patches(keys, kernel_size, padding_mode) * queries.unsqueeze(2)).sum(1)


def range_scale(range_param: torch.Tensor, variant: str = 'softmax') -> torch.Tensor:
    """A JBU range kernel's scale from its parameter: for 'softmax' the temperature
    ``clamp(exp(range_temp), 1e-4, 1e4)``, for the Gaussians ``1 / (2 sigma_range^2)``."""
    if variant == 'softmax':
        return range_param.exp().clamp(1e-4, 1e4)
    return 1 / (2 * range_param**2)


def spatial_kernel(sigma_spatial: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(k*k,) Gaussian of the tap offsets ``exp(-(u_i^2 + u_j^2) / (2 sigma_spatial^2))``,
    u = linspace(-1, 1, k), tap p = i * k + j."""
    offsets = torch.linspace(-1, 1, kernel_size, device=sigma_spatial.device,
                             dtype=sigma_spatial.dtype)
    squared = offsets[:, None].square() + offsets[None, :].square()
    return torch.exp(-squared / (2 * sigma_spatial**2)).flatten()


def normalized_range_kernel_reference(keys: torch.Tensor, range_param: torch.Tensor,
                                      sigma_spatial: torch.Tensor, kernel_size: int = 7,
                                      variant: str = 'softmax', padding_mode: str = 'reflect',
                                      correlation=window_correlation_reference) -> torch.Tensor:
    """``K = R * S / clamp(sum_p R * S, min=1e-7)``, S = :func:`spatial_kernel` of
    ``sigma_spatial`` and R the range kernel of ``variant`` over the window dot products
    ``<Q_c, Q~_p>`` of the keys, with scale = :func:`range_scale` of ``range_param``:

    - 'softmax': softmax over the taps of ``scale * <Q_c, Q~_p>``;
    - 'gaussian_euclidean':
      ``exp(-scale * clamp_min(|Q_c|^2 + |Q~_p|^2 - 2 <Q_c, Q~_p>, 0))``;
    - 'gaussian_cosine': ``exp(-scale * (1 - <Q_c, Q~_p>))``, for unit keys.

    Computed in float64 for float64 keys, else in float32 (half-precision keys feed a sharp
    softmax or exponential), the result in the keys' dtype.

    ``correlation``: the window correlation it is composed of (the reference by default;
    featup_mmseg.ops passes its compiled op where it has no fused kernel).
    """
    dtype = keys.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    keys, range_param = keys.to(compute), range_param.to(compute)
    sigma_spatial = sigma_spatial.to(compute)
    dots = correlation(keys, kernel_size, padding_mode)
    scale = range_scale(range_param, variant)
    if variant == 'softmax':
        range_kernel = F.softmax(scale * dots, dim=1)
    else:
        if variant == 'gaussian_cosine':
            distance = 1 - dots
        else:
            norms = keys.square().sum(1, keepdim=True)
            window_norms = window_patches(norms, kernel_size, padding_mode)[:, 0]
            distance = (norms + window_norms - 2 * dots).clamp_min(0)
        range_kernel = torch.exp(-scale * distance)
    combined = range_kernel * spatial_kernel(sigma_spatial, kernel_size).view(1, -1, 1, 1)
    return (combined / combined.sum(1, keepdim=True).clamp(min=1e-7)).to(dtype)


def adaptive_conv_reference(x: torch.Tensor, kernel: torch.Tensor,
                            padding_mode: str = 'reflect') -> torch.Tensor:
    """out[b, c, y, x] = sum_p kernel[b, p, y, x] * x~[b, c, y + i - r, x + j - r]."""
    kernel_size = math.isqrt(kernel.shape[1])
    return (window_patches(x, kernel_size, padding_mode) * kernel.unsqueeze(1)).sum(2)


def adaptive_conv_transpose_reference(y: torch.Tensor, kernel: torch.Tensor,
                                      padding_mode: str = 'reflect') -> torch.Tensor:
    """The adjoint of adaptive_conv_reference in x: the gradient of <adaptive_conv(x), y>.

    adaptive_conv is linear in x, so its vector-Jacobian product at any x (zeros here) is
    the adjoint applied to y; under grad mode the result stays differentiable in y and
    kernel.
    """
    x = torch.zeros_like(y, requires_grad=True)
    with torch.enable_grad():
        out = adaptive_conv_reference(x, kernel, padding_mode)
    return torch.autograd.grad(out, x, y, create_graph=torch.is_grad_enabled())[0]


def bicubic_resize_reference(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bicubic', align_corners=False)``."""
    return F.interpolate(x, tuple(size), mode='bicubic', align_corners=False)


def bicubic_resize_transpose_reference(y: torch.Tensor, input_size) -> torch.Tensor:
    """The adjoint of bicubic_resize_reference for an input of ``input_size`` (H, W): the
    gradient of <bicubic_resize(x), y> in x, differentiable in y under grad mode."""
    x = y.new_zeros((*y.shape[:2], *input_size), requires_grad=True)
    with torch.enable_grad():
        out = bicubic_resize_reference(x, y.shape[-2:])
    return torch.autograd.grad(out, x, y, create_graph=torch.is_grad_enabled())[0]


def neighbourhood_sources(size: int, input_size: int, kernel_size: int, dilation: int,
                          border: str, device=None) -> torch.Tensor:
    """Source indices (size, k) along one axis of the neighbourhood attention window.

    Query index y of ``size`` sits on low-res cell ``c = floor((y + 1/2) * input_size /
    size)`` (nearest-exact). For border 'shift', tap t reads ``c % dilation + (s + t) *
    dilation`` with ``s = clamp(c // dilation - k // 2, 0, L - k)``, L the number of cells of
    c's residue class modulo dilation; for 'clamp', ``clamp(c + (t - k // 2) * dilation, 0,
    input_size - 1)``.
    """
    cells = (2 * torch.arange(size, device=device) + 1) * input_size // (2 * size)
    taps = torch.arange(kernel_size, device=device)
    if border == 'shift':
        residue = cells % dilation
        class_size = (input_size - 1 - residue) // dilation + 1
        start = torch.minimum((cells // dilation - kernel_size // 2).clamp(min=0),
                              class_size - kernel_size)
        return residue.unsqueeze(1) + (start.unsqueeze(1) + taps) * dilation
    return (cells.unsqueeze(1) + (taps - kernel_size // 2) * dilation).clamp(0, input_size - 1)


def neighbourhood_windows(x: torch.Tensor, size, kernel_size: int, dilation: int,
                          border: str) -> torch.Tensor:
    """The k x k window of low-res ``x`` (N, C, h, w) seen by every query of an (H, W) map,
    as a (N, C, k*k, H, W) tensor (tap t = ty*k + tx)."""
    batch, channels, height, width = x.shape
    rows = neighbourhood_sources(size[0], height, kernel_size, dilation, border, x.device)
    cols = neighbourhood_sources(size[1], width, kernel_size, dilation, border, x.device)
    windows = x[:, :, rows][..., cols]  # (N, C, H, k, W, k)
    return windows.permute(0, 1, 3, 5, 2, 4).reshape(batch, channels,
                                                     kernel_size * kernel_size, *size)


def neighbourhood_attention_scores_reference(queries: torch.Tensor, keys: torch.Tensor,
                                             kernel_size: int, dilation: int = 1,
                                             border: str = 'shift') -> torch.Tensor:
    """scores[n, t, y, x] = sum_c queries[n, c, y, x] * keys[n, c, row(y, ty), col(x, tx)]."""
    windows = neighbourhood_windows(keys, queries.shape[-2:], kernel_size, dilation, border)
    return (windows * queries.unsqueeze(2)).sum(1)


def neighbourhood_attention_aggregate_reference(attn: torch.Tensor, values: torch.Tensor,
                                                dilation: int = 1,
                                                border: str = 'shift') -> torch.Tensor:
    """out[n, c, y, x] = sum_t attn[n, t, y, x] * values[n, c, row(y, ty), col(x, tx)]."""
    kernel_size = math.isqrt(attn.shape[1])
    windows = neighbourhood_windows(values, attn.shape[-2:], kernel_size, dilation, border)
    return (windows * attn.unsqueeze(1)).sum(2)


def neighbourhood_attention_transpose_reference(attn: torch.Tensor, features: torch.Tensor,
                                                input_size, dilation: int = 1,
                                                border: str = 'shift') -> torch.Tensor:
    """The adjoint of neighbourhood_attention_aggregate_reference in its values, for values
    of ``input_size`` (h, w), applied to ``features`` (N, C, H, W); differentiable in attn
    and features under grad mode."""
    values = features.new_zeros((*features.shape[:2], *input_size), requires_grad=True)
    with torch.enable_grad():
        out = neighbourhood_attention_aggregate_reference(attn, values, dilation, border)
    return torch.autograd.grad(out, values, features, create_graph=torch.is_grad_enabled())[0]


def masked_dot_reference(x: torch.Tensor, keep: torch.Tensor,
                         weight: torch.Tensor) -> torch.Tensor:
    """``sum_c where(keep, x, 0) * weight`` over the last dimension."""
    return (torch.where(keep, x, x.new_zeros(())) * weight).sum(-1)
