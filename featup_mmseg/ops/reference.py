"""Pure-PyTorch reference of the window ops (FeatUp's adaptive convolution and its
range-kernel correlation, paper section 3.2) and of the bicubic resize.

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
