"""FeatUp's learned downsamplers (paper section 3.1): high-res features -> a low-res grid.

Both slide a k x k window over the high-res map with the stride that lands on the target
grid, (H - k) // (h - 1) per dimension as in FeatUp; where that stride overshoots, the
windows beyond the target size are dropped.
"""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .argument_checks import check_choice, check_int


def window_grid(input_size: Sequence[int], output_size: Sequence[int],
                kernel_size: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """(stride, number of windows) per dimension for k x k windows from input to output;
    the number of windows is at least the output size."""
    strides, grid = [], []
    for n_in, n_out in zip(input_size, output_size):
        if n_in < kernel_size:
            raise ValueError(f'downsampler: kernel_size {kernel_size} is larger than the '
                             f'input size {tuple(input_size)}')
        stride = n_in - kernel_size + 1 if n_out == 1 else max(1, (n_in - kernel_size) //
                                                               (n_out - 1))
        strides.append(stride)
        grid.append((n_in - kernel_size) // stride + 1)
    return tuple(strides), tuple(grid)


def windows(x: torch.Tensor, kernel_size: int, output_size: Sequence[int]) -> torch.Tensor:
    """(B, C, k*k, h, w): the k x k windows of x (B, C, H, W) for an (h, w) output."""
    batch, channels = x.shape[:2]
    stride, _ = window_grid(x.shape[-2:], output_size, kernel_size)
    # only the part the first h x w windows cover, so no window is unfolded to be dropped
    covered = x[..., :(output_size[0] - 1) * stride[0] + kernel_size,
                :(output_size[1] - 1) * stride[1] + kernel_size]
    patches = F.unfold(covered, kernel_size, stride=stride)
    return patches.view(batch, channels, kernel_size**2, *output_size)


def _window_taps(pixels: torch.Tensor, stride: Sequence[int], output_size: Sequence[int],
                 kernel_size: int):
    """Yields (tap index, (B, h, w, C) strided view of ``pixels`` (B, H, W, C) at that tap
    of every window), for the k*k taps in unfold's row-major order."""
    span = [(n - 1) * s + 1 for n, s in zip(output_size, stride)]
    for tap_y in range(kernel_size):
        for tap_x in range(kernel_size):
            yield tap_y * kernel_size + tap_x, pixels[:, tap_y:tap_y + span[0]:stride[0],
                                                      tap_x:tap_x + span[1]:stride[1]]


class _WindowWeightedSum(torch.autograd.Function):
    """out[b, i, j] = sum_p pixels[b, window (i, j) at tap p] * weights[b, p, i, j].

    The same sum as weighting the unfolded windows (B, C, k*k, h, w), tap by tap over
    channels-last pixels: no unfolded copy of the features, and each tap reads whole
    pixels (C contiguous values)."""

    @staticmethod
    def forward(ctx, pixels, weights, stride, kernel_size):
        output_size = weights.shape[-2:]
        out = pixels.new_zeros(pixels.shape[0], *output_size, pixels.shape[-1])
        for tap, values in _window_taps(pixels, stride, output_size, kernel_size):
            out.addcmul_(values, weights[:, tap, :, :, None])
        ctx.save_for_backward(pixels, weights)
        ctx.stride, ctx.kernel_size = stride, kernel_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        pixels, weights = ctx.saved_tensors
        output_size = weights.shape[-2:]
        grad_pixels = torch.zeros_like(pixels) if ctx.needs_input_grad[0] else None
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[1] else None
        grad_taps = _window_taps(grad_pixels, ctx.stride, output_size, ctx.kernel_size) \
            if grad_pixels is not None else None
        for tap, values in _window_taps(pixels, ctx.stride, output_size, ctx.kernel_size):
            if grad_taps is not None:
                next(grad_taps)[1].addcmul_(grad_out, weights[:, tap, :, :, None])
            if grad_weights is not None:
                grad_weights[:, tap] = torch.linalg.vecdot(grad_out, values)
        return grad_pixels, grad_weights, None, None


class SimpleDownsampler(nn.Module):
    """Depthwise convolution with one learned k x k kernel, normalised to ``|w| / sum |w|``."""

    def __init__(self, kernel_size: int = 16):
        super().__init__()
        self.kernel_size = kernel_size = check_int('SimpleDownsampler', 'kernel_size', kernel_size)
        self.kernel_params = nn.Parameter(torch.ones(kernel_size, kernel_size))

    def kernel(self) -> torch.Tensor:
        weights = self.kernel_params.abs()
        return weights / weights.sum()

    def forward(self, features: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        channels = features.shape[1]
        stride, _ = window_grid(features.shape[-2:], output_size, self.kernel_size)
        kernel = self.kernel().to(features.dtype).expand(channels, 1, -1, -1)
        out = F.conv2d(features, kernel, stride=stride, groups=channels)
        return out[:, :, :output_size[0], :output_size[1]]


class AttentionDownsampler(nn.Module):
    """Per output cell, a softmax over its k x k window of ``w * a + b`` weights the
    high-res features; ``a`` is a learned linear saliency of each feature (dropout 0.2 in
    training), ``w`` and ``b`` learned k x k tables (init 1 and 0, plus 0.01 noise).
    Parameter names are FeatUp's (``attention_net.1.*``, ``w``, ``b``)."""

    def __init__(self, feat_dim: int, kernel_size: int = 16):
        super().__init__()
        feat_dim = check_int('AttentionDownsampler', 'feat_dim', feat_dim)
        self.kernel_size = kernel_size = check_int('AttentionDownsampler', 'kernel_size',
                                                   kernel_size)
        self.attention_net = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(feat_dim, 1))
        self.w = nn.Parameter(torch.ones(kernel_size, kernel_size) +
                              0.01 * torch.randn(kernel_size, kernel_size))
        self.b = nn.Parameter(torch.zeros(kernel_size, kernel_size) +
                              0.01 * torch.randn(kernel_size, kernel_size))

    def attention(self, features: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        """(B, k*k, h, w) window weights, summing to 1 over the taps."""
        return self._attention(features.permute(0, 2, 3, 1), output_size)

    def _attention(self, pixels: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        """:meth:`attention` of channels-last (B, H, W, C) features."""
        saliency = self.attention_net(pixels).permute(0, 3, 1, 2)
        logits = windows(saliency, self.kernel_size, output_size)[:, 0]
        logits = logits * self.w.reshape(1, -1, 1, 1) + self.b.reshape(1, -1, 1, 1)
        return torch.softmax(logits, dim=1)

    def forward(self, features: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        stride, _ = window_grid(features.shape[-2:], output_size, self.kernel_size)
        # one channels-last copy serves the saliency's linear layer and the window sums
        pixels = features.permute(0, 2, 3, 1).contiguous()
        out = _WindowWeightedSum.apply(pixels, self._attention(pixels, output_size), stride,
                                       self.kernel_size)
        return out.permute(0, 3, 1, 2)


DOWNSAMPLERS = ('attention', 'simple')


def build_downsampler(kind: str, feat_dim: int, kernel_size: int) -> nn.Module:
    """The downsampler ``kind`` (one of ``DOWNSAMPLERS``) for ``feat_dim`` channels."""
    check_choice('build_downsampler', 'kind', kind, DOWNSAMPLERS)
    if kind == 'attention':
        return AttentionDownsampler(feat_dim, kernel_size)
    return SimpleDownsampler(kernel_size)
