"""Shared pieces of the feature upsamplers: input checks, the size contract of the
integer-scale methods and content-aware reassembly on the compiled window ops.

Size contract of the integer-scale methods (all but ``ResizeConv``): for a source of
h x w and a scale s, the guidance (and output) must be H x W with ``ceil(H / s) = h`` and
``ceil(W / s) = w``: exactly s*h x s*w, or up to s - 1 pixels smaller per side, the sizes
a stride-s level has under an odd input (mmseg's 513 px crops give 129 -> 65 -> 33 -> 17).
A smaller guidance is handled as the bottom/right crop of the exact s x result: the
method runs at s*h x s*w (guidance-derived maps are padded at the bottom/right edge by
replication, their values there only feed outputs that are cropped away) and the last rows
and columns are dropped, so every kept output pixel sits where it would in the exact case.
Other sizes are refused with a ValueError naming the method, the sizes and what works.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F

from ...ops import adaptive_conv
from ..argument_checks import check_int

HALF_TYPES = (torch.float16, torch.bfloat16)


def check_odd(owner: str, name: str, value) -> int:
    """``value`` as an int, if it is an odd integer >= 1 (a window with a centre tap)."""
    value = check_int(owner, name, value)
    if value % 2 == 0:
        raise ValueError(f'{owner}: {name} must be an odd integer >= 1, got {value}')
    return value


def check_inputs(owner: str, source, guidance, source_dim: int, guidance_dim: int) -> None:
    """Refuses anything but (B, source_dim, h, w) and (B, guidance_dim, H, W) tensors."""
    for name, t in (('source', source), ('guidance', guidance)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{owner}: {name} must be a torch.Tensor, got {type(t).__name__}')
    if source.dim() != 4 or guidance.dim() != 4:
        raise ValueError(f'{owner}: source and guidance must be 4-D (B, C, H, W), got '
                         f'{tuple(source.shape)} and {tuple(guidance.shape)}')
    if source.shape[1] != source_dim or min(source.shape[2:]) < 1:
        raise ValueError(f'{owner}: source must be (B, {source_dim}, h, w) with h, w >= 1 '
                         f'(source_dim={source_dim}), got {tuple(source.shape)}')
    if guidance.shape[1] != guidance_dim or min(guidance.shape[2:]) < 1:
        raise ValueError(f'{owner}: guidance must be (B, {guidance_dim}, H, W) with H, W >= 1 '
                         f'(guidance_dim={guidance_dim}), got {tuple(guidance.shape)}')
    if source.shape[0] != guidance.shape[0]:
        raise ValueError(f'{owner}: source batch {source.shape[0]} != guidance batch '
                         f'{guidance.shape[0]}')


def empty_batch(source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """The (0, C, H, W) result of an empty batch, from the source (so that gradients flow),
    without running the method on it: several of its steps (grouped convolutions over the
    samples, the pixel shuffle's backward) do not take an empty batch."""
    return source[:, :, :1, :1].expand(-1, -1, *guidance.shape[-2:])


def check_scaled_size(owner: str, source: torch.Tensor, guidance: torch.Tensor,
                      scale: int) -> Tuple[int, int]:
    """(s*h, s*w), the exact s x size, after checking the size contract of this module."""
    height, width = source.shape[-2:]
    out_height, out_width = guidance.shape[-2:]
    if math.ceil(out_height / scale) != height or math.ceil(out_width / scale) != width:
        raise ValueError(
            f'{owner} upsamples by an integer factor of {scale}: for a {height} x {width} '
            f'source the guidance (the output size) must be {scale * height} x '
            f'{scale * width}, or up to {scale - 1} pixel(s) smaller per side (ceil(H / '
            f'{scale}) = h, ceil(W / {scale}) = w, as for 129 -> 65), got {out_height} x '
            f'{out_width}; resize the source or the guidance to such a pair, or use '
            'ResizeConv for arbitrary sizes')
    return scale * height, scale * width


def pad_bottom_right(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``x`` extended to (height, width) by replicating its last rows and columns."""
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, [0, pad_w, 0, pad_h], mode='replicate')


def crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The top-left (height, width) of ``x``."""
    if x.shape[-2:] == (height, width):
        return x
    return x[..., :height, :width]


def softmax_taps(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Softmax over dim 1 computed in float32 for half inputs (a sharp softmax over few taps
    loses most of its precision in float16/bfloat16), returned in ``dtype``."""
    if logits.dtype in HALF_TYPES:
        logits = logits.float()
    return F.softmax(logits, dim=1).to(dtype)


def reassemble(source: torch.Tensor, kernel: torch.Tensor, scale: int) -> torch.Tensor:
    """Content-aware reassembly (CARAFE's, also SAPA's, A2U's and FADE's aggregation).

    ``out[b, c, Y, X] = sum_p kernel[b, p, Y, X] * source~[b, c, Y // s + i - r,
    X // s + j - r]`` for tap ``p = i*k + j``, with ``source~`` zero outside the source.

    For each sub-pixel phase (a, b) this is the compiled ``adaptive_conv`` of the source
    with that phase's kernel, ``kernel[..., a::s, b::s]``, at the low resolution; the s*s
    results are interleaved by a pixel shuffle. Nothing of size k*k x C is materialised.

    Args:
        source: (B, C, h, w).
        kernel: (B, k*k, s*h, s*w) per-output-pixel weights, odd k.
        scale: s.

    Returns:
        (B, C, s*h, s*w) in the source's dtype.
    """
    kernel = kernel.to(source.dtype)
    batch, channels, height, width = source.shape
    phases = [adaptive_conv(source, kernel[:, :, a::scale, b::scale], 'zeros')
              for a in range(scale) for b in range(scale)]
    # (B, C, s*s, h, w) -> channel c*s*s + a*s + b, which pixel_shuffle puts at (s*y+a, s*x+b)
    stacked = torch.stack(phases, dim=2).reshape(batch, channels * scale * scale, height, width)
    return F.pixel_shuffle(stacked, scale)
