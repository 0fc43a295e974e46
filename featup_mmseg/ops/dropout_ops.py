"""Python API of the dropout ops: a Bernoulli mask drawn as torch draws its own, and the
masked dot product that applies it (a dropout followed by a linear map to one output, as in
FeatUp's attention downsampler), compiled for the CPU.

Both keep a dropout's numbers: the mask is the one ``bernoulli_`` (and so ``nn.Dropout``)
draws from the default generator, and the product never forms the dropped features or a
float mask. On other devices they run as chunks of PyTorch ops.
"""
import functools
import math
from typing import Optional, Sequence, Union

import torch
from torch.autograd.function import once_differentiable

from .window_ops import _use_ext


@functools.lru_cache(maxsize=None)
def _compiled_bernoulli_matches_torch() -> bool:
    """Whether the compiled draw equals torch's CPU ``bernoulli_`` in this process (torch
    draws differently, through MKL, on Intel CPUs), asked once with the default generator's
    state restored, so no random number is used."""
    generator = torch.default_generator
    state = generator.get_state()
    try:
        expected = torch.empty(1000, dtype=torch.bool).bernoulli_(0.5)
        expected_state = generator.get_state()
        generator.set_state(state)
        drawn = torch.empty(1000, dtype=torch.bool)
        torch.ops.featup_mmseg.bernoulli_out(drawn, 0.5)
        return torch.equal(drawn, expected) and torch.equal(generator.get_state(),
                                                            expected_state)
    finally:
        generator.set_state(state)


def bernoulli_mask(size: Sequence[int], p: float,
                   device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """``torch.empty(size, dtype=torch.bool, device=device).bernoulli_(p)``.

    The same draws from the device's default generator, in the same (memory) order, and the
    generator left in the same state. On CPU the draws are compiled: several times faster
    than torch's element-by-element loop (where torch draws through MKL instead, on Intel
    CPUs, its own ``bernoulli_`` runs).

    Args:
        size: the mask's shape, non-negative ints.
        p: the probability of True, in [0, 1].
        device: where the mask is drawn (default: CPU).

    Returns:
        A contiguous bool tensor of ``size``.
    """
    op = 'bernoulli_mask'
    if not isinstance(size, (list, tuple, torch.Size)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in size):
        raise ValueError(f'{op}: size must be a sequence of non-negative ints, got {size!r}')
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f'{op}: p must be a number in [0, 1], got {p!r}')
    device = torch.device('cpu' if device is None else device)
    mask = torch.empty(tuple(size), dtype=torch.bool, device=device)
    if device.type == 'cpu' and _use_ext(device) and _compiled_bernoulli_matches_torch():
        torch.ops.featup_mmseg.bernoulli_out(mask, float(p))
        return mask
    return mask.bernoulli_(p)


def masked_dot(x: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(torch.where(keep, x, 0) * weight).sum(-1)``, without the masked tensor.

    ``linear(dropout(x))`` to one output is ``masked_dot(x, keep, weight / (1 - p)) + bias``
    with ``keep`` the dropout's mask. Neither the dropped features nor a float mask is
    stored for the backward pass (only x and the bool mask, which the caller holds anyway).

    Args:
        x: (..., C) floating point, with at least one leading dimension.
        keep: bool, x's shape, at any strides (e.g. a channels-last view of a mask drawn
            channel-major, read in place), on x's device.
        weight: (C,), x's dtype and device.

    Returns:
        x's shape without its last dimension, x's dtype. Differentiable in x and weight
        (first order on the compiled CPU path).
    """
    op = 'masked_dot'
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f'{op}: x must be a floating point (..., C) tensor with at least two '
                         f'dimensions, got {_describe(x)}')
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or \
            keep.shape != x.shape or keep.device != x.device:
        raise ValueError(f'{op}: keep must be a bool tensor of x\'s shape {tuple(x.shape)} on '
                         f'{x.device}, got {_describe(keep)}')
    if not isinstance(weight, torch.Tensor) or weight.shape != x.shape[-1:] or \
            weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f'{op}: weight must be a ({x.shape[-1]},) tensor of x\'s dtype '
                         f'{x.dtype} on {x.device}, got {_describe(weight)}')
    # (B, P, C): the first dimension kept apart, so that a permuted mask stays a view
    shape = (x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1])
    if x.device.type == 'cpu' and _use_ext(x.device) and not torch.jit.is_tracing():
        out = _CompiledMaskedDot.apply(x.reshape(shape), keep.reshape(shape),
                                       weight.contiguous())
    else:
        out = _ChunkedMaskedDot.apply(x.reshape(shape), keep.reshape(shape), weight)
    return out.view(x.shape[:-1])


def _describe(t) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f'{t.dtype} {tuple(t.shape)} on {t.device}'


class _CompiledMaskedDot(torch.autograd.Function):
    """The CPU kernels: a block of pixels per task, the mask read where it lies."""

    @staticmethod
    def forward(ctx, x, keep, weight):
        x = x if x.stride(-1) == 1 else x.contiguous()
        ctx.save_for_backward(x, keep, weight)
        return torch.ops.featup_mmseg.masked_dot(x, keep, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, keep, weight = ctx.saved_tensors
        grad_x, grad_weight = torch.ops.featup_mmseg.masked_dot_backward(
            grad, x, keep, weight,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[2]])
        return grad_x, None, grad_weight


class _ChunkedMaskedDot(torch.autograd.Function):
    """Any device: the masked features formed a chunk of pixels at a time (with ``where``,
    not a product with the mask that would first convert it to floats); on CPU a
    cache-sized chunk, used while it is in cache; elsewhere larger ones, for fewer
    launches."""

    @staticmethod
    def _chunk_size(flat_x: torch.Tensor) -> int:
        # 4096 pixels: 6 MiB of 384-channel float32 features; at least 1 for an empty batch
        return max(1, min(4096 if flat_x.device.type == 'cpu' else 65536, flat_x.shape[0]))

    @staticmethod
    def _chunks(flat_x: torch.Tensor):
        """(slice, scratch) of each chunk of the (N, C) pixels: the chunk's rows, and a
        (length, C) view of one scratch buffer that all chunks share."""
        total, size = flat_x.shape[0], _ChunkedMaskedDot._chunk_size(flat_x)
        scratch = flat_x.new_empty(size, flat_x.shape[1])
        return [(slice(start, start + size), scratch[:min(size, total - start)])
                for start in range(0, total, size)]

    @staticmethod
    def forward(ctx, x, keep, weight):
        flat_x, flat_keep = x.reshape(-1, x.shape[-1]), keep.reshape(-1, x.shape[-1])
        out = x.new_empty(flat_x.shape[0])
        zero = x.new_zeros(())
        for chunk, dropped in _ChunkedMaskedDot._chunks(flat_x):
            torch.where(flat_keep[chunk], flat_x[chunk], zero, out=dropped)
            torch.mv(dropped, weight, out=out[chunk])
        ctx.save_for_backward(x, keep, weight)
        return out.view(x.shape[:-1])

    @staticmethod
    def backward(ctx, grad):
        x, keep, weight = ctx.saved_tensors
        flat_x, flat_keep = x.reshape(-1, x.shape[-1]), keep.reshape(-1, x.shape[-1])
        grad_flat = grad.reshape(-1, 1)
        grad_x = torch.empty_like(flat_x) if ctx.needs_input_grad[0] else None
        grad_weight = weight.new_zeros(weight.shape) if ctx.needs_input_grad[2] else None
        zero = x.new_zeros(())
        for chunk, scratch in _ChunkedMaskedDot._chunks(flat_x):
            if grad_x is not None:
                torch.mul(grad_flat[chunk], weight, out=scratch)
                torch.where(flat_keep[chunk], scratch, zero, out=grad_x[chunk])
            if grad_weight is not None:
                torch.where(flat_keep[chunk], flat_x[chunk], zero, out=scratch)
                grad_weight.addmv_(scratch.T, grad_flat[chunk, 0])
        if grad_x is not None:
            grad_x = grad_x.view(x.shape)
        return grad_x, None, grad_weight
