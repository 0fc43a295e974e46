"""FeatUp's learned downsamplers (paper section 3.1): high-res features -> a low-res grid.

Both slide a k x k window over the high-res map with the stride that lands on the target
grid, (H - k) // (h - 1) per dimension as in FeatUp; where that stride overshoots, the
windows beyond the target size are dropped.
"""
import functools
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import bernoulli_mask, masked_dot
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


def _band_taps(band: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """(B, w, k, k) view of the k x k taps of each window in a contiguous (B, w, k*W) band:
    window j's tap (ty, tx) sits at column ty * W + j * stride + tx of its row."""
    batch, out_width, length = band.shape
    return band.as_strided((batch, out_width, kernel_size, kernel_size),
                           (out_width * length, length + stride, length // kernel_size, 1),
                           band.storage_offset())


def _row_band(weights: torch.Tensor, row: int, kernel_size: int, stride: int,
              width: int) -> torch.Tensor:
    """(B, w, k*W): the weights (B, k*k, h, w) of output row ``row``'s windows, each where
    its taps fall in the k input rows (of width W, flattened) the row covers; zero elsewhere."""
    batch, _, _, out_width = weights.shape
    band = weights.new_zeros(batch, out_width, kernel_size * width)
    _band_taps(band, kernel_size, stride).copy_(
        weights[:, :, row].unflatten(1, (kernel_size, kernel_size)).permute(0, 3, 1, 2))
    return band


def _row_pixels(pixels: torch.Tensor, row: int, stride: int, kernel_size: int) -> torch.Tensor:
    """(B, k*W, C) view of the k rows of contiguous (B, H, W, C) ``pixels`` under output
    row ``row``."""
    batch, _, width, channels = pixels.shape
    return pixels[:, row * stride:row * stride + kernel_size].view(
        batch, kernel_size * width, channels)


class _WindowWeightedSum(torch.autograd.Function):
    """out[b, i, j] = sum_p pixels[b, window (i, j) at tap p] * weights[b, p, i, j].

    The same sum as weighting the unfolded windows (B, C, k*k, h, w), one output row at a
    time as a matrix product: the k input rows under output row i are contiguous in
    channels-last pixels (B, H, W, C), a (k*W, C) matrix without a copy, and the row's
    window weights placed in a (w, k*W) band (:func:`_row_band`) map it to the row's
    (w, C) output. The backward is the two matching products per row."""

    @staticmethod
    def forward(ctx, pixels, weights, stride, kernel_size):
        batch, _, width, channels = pixels.shape
        out_height, out_width = weights.shape[-2:]
        out = pixels.new_empty(out_height, batch, out_width, channels)
        for row in range(out_height):
            torch.bmm(_row_band(weights, row, kernel_size, stride[1], width),
                      _row_pixels(pixels, row, stride[0], kernel_size), out=out[row])
        ctx.save_for_backward(pixels, weights)
        ctx.stride, ctx.kernel_size = stride, kernel_size
        return out.permute(1, 0, 2, 3)

    @staticmethod
    def backward(ctx, grad_out):
        pixels, weights = ctx.saved_tensors
        stride, kernel_size = ctx.stride, ctx.kernel_size
        width = pixels.shape[2]
        grad_pixels = torch.zeros_like(pixels) if ctx.needs_input_grad[0] else None
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[1] else None
        for row in range(weights.shape[-2]):
            grad_row = grad_out[:, row]
            if grad_weights is not None:
                grad_band = torch.bmm(
                    grad_row, _row_pixels(pixels, row, stride[0], kernel_size).transpose(1, 2))
                grad_weights[:, :, row] = _band_taps(grad_band, kernel_size,
                                                     stride[1]).permute(0, 2, 3, 1).flatten(1, 2)
            if grad_pixels is not None:
                # consecutive rows' windows overlap where kernel_size > stride: accumulate
                _row_pixels(grad_pixels, row, stride[0], kernel_size).baddbmm_(
                    _row_band(weights, row, kernel_size, stride[1], width).transpose(1, 2),
                    grad_row)
        return grad_pixels, grad_weights, None, None


@functools.lru_cache(maxsize=None)
def _dropout_draws_in_memory_order(device: torch.device) -> bool:
    """Whether ``F.dropout`` of a permuted (B, C, H, W)-contiguous tensor draws its mask in
    memory order (torch 2.13) or in the view's logical order (torch 2.1), asked of this torch
    on ``device`` once with the generator's state restored, so no random number is used."""
    if device.type == 'cuda':
        generator = torch.cuda.default_generators[device.index
                                                  if device.index is not None
                                                  else torch.cuda.current_device()]
    elif device.type == 'cpu':
        generator = torch.default_generator
    else:
        return True
    state = generator.get_state()
    try:
        probe = torch.ones(1, 4, 4, 4, device=device).permute(0, 2, 3, 1)
        kept = F.dropout(probe, 0.5, training=True) != 0
        generator.set_state(state)
        in_memory_order = torch.empty(1, 4, 4, 4, dtype=torch.bool, device=device)
        in_memory_order = in_memory_order.bernoulli_(0.5).permute(0, 2, 3, 1)
    finally:
        generator.set_state(state)
    return torch.equal(kept, in_memory_order)


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
        saliency = self._saliency(pixels).permute(0, 3, 1, 2)
        logits = windows(saliency, self.kernel_size, output_size)[:, 0]
        logits = logits * self.w.reshape(1, -1, 1, 1) + self.b.reshape(1, -1, 1, 1)
        return torch.softmax(logits, dim=1)

    def _saliency(self, pixels: torch.Tensor) -> torch.Tensor:
        """``attention_net`` of channels-last (B, H, W, C) features: (B, H, W, 1). In
        training, the dropout's mask is a bool tensor drawn from the same random numbers,
        in the same order, as ``nn.Dropout`` draws its own for the permuted
        (B, C, H, W)-contiguous features of the definition (an order that changed between
        torch versions), and applied by ``masked_dot`` with the dropout's 1 / (1 - p)
        folded into the weight: neither a float mask nor the dropped features are formed."""
        dropout, linear = self.attention_net
        if not self.training or dropout.p == 0:
            return linear(pixels)
        batch, height, width, channels = pixels.shape
        if _dropout_draws_in_memory_order(pixels.device):
            keep = bernoulli_mask((batch, channels, height, width), 1 - dropout.p,
                                  pixels.device).permute(0, 2, 3, 1)
        else:
            keep = bernoulli_mask(pixels.shape, 1 - dropout.p, pixels.device)
        saliency = masked_dot(pixels, keep, linear.weight[0] / (1 - dropout.p))
        return saliency.unsqueeze(-1) + linear.bias

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
