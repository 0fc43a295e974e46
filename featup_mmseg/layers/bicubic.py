"""Bicubic resizing with a fast gradient, alone and fused into the JBU's window aggregation.

Where the compiled kernels serve the device, the resize and its adjoint are the compiled
ops (:func:`featup_mmseg.ops.bicubic_resize`). Elsewhere they are matrix products: bicubic
resizing (``align_corners=False``) is separable, resizing (B, C, h, w) to (H, W) is
``rows @ source @ columns^T`` with the (H, h) and (W, w) resize matrices of
:func:`bicubic_matrix`. All forms give PyTorch's numbers up to round-off.
"""
import math

import torch
import torch.nn.functional as F

from ..ops import (adaptive_conv, adaptive_conv_transpose, bicubic_resize_transpose,
                   ext_available, window_cross_correlation)
from ..ops import bicubic_resize as compiled_bicubic_resize
from .code_paths import takes_cpu_path

# Largest resized chunk (bytes) of resized_adaptive_conv on CPU: small enough to stay in
# the caches and in the allocator's reused memory, large enough that the per-chunk
# overhead (a few op calls) vanishes against the work.
RESIZED_CHUNK_BYTES = 4 * 2**20
# The same on a GPU, where each chunk's few kernel launches cost more than its arithmetic
# and caches do not matter: the chunks only bound the memory (H100, the six JBU stages of
# a SegFormer-B1 head step: 46 ms with 4 MiB chunks, 30 ms with 32 MiB, 32 ms whole).
ACCELERATOR_RESIZED_CHUNK_BYTES = 32 * 2**20


def bicubic_resize(source: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(source, size, mode='bicubic', align_corners=False)``.

    When gradients flow to ``source``, computed by the compiled op, or without it as two
    products with the resize matrices (:func:`resize_matrices`): the same numbers
    up to round-off, and far cheaper than PyTorch's CPU bicubic backward (its scatter was
    14 % of a SegFormer JBU head step). Without gradients, and under torch.jit.trace
    (FLOP counters, the TorchScript ONNX exporter), the plain resize runs, so inference,
    FLOP counts and exports see the operator itself.
    """
    if not (torch.is_grad_enabled() and source.requires_grad) or torch.jit.is_tracing():
        return F.interpolate(source, size, mode='bicubic', align_corners=False)
    return _Resizer(source, size).resize(source)


def resize_matrices(source: torch.Tensor, size):
    """The (H, h) row and (W, w) column resize matrices from source's (h, w) to size."""
    return (bicubic_matrix(source.shape[-2], size[0], source),
            bicubic_matrix(source.shape[-1], size[1], source))


def bicubic_matrix(input_size: int, output_size: int, like: torch.Tensor) -> torch.Tensor:
    """(output_size, input_size) M: the bicubic resize of a vector v is M @ v.

    M's columns are the resizes of the unit vectors, taken with F.interpolate itself on
    ``like``'s device, so they hold exactly its weights, border clamping included.
    """
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    eye = torch.eye(input_size, dtype=dtype, device=like.device)
    columns = F.interpolate(eye.view(1, input_size, input_size, 1), (output_size, 1),
                            mode='bicubic', align_corners=False)
    return columns.view(input_size, output_size).t().to(like.dtype)


def _resize(x: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """rows @ x @ columns^T; with the matrices transposed, the resize's adjoint."""
    # rows first: the second product then folds into one matrix product with a contiguous
    # (B, C, H, W) result
    return torch.matmul(torch.matmul(rows, x), columns.t())


class _SeparableResize(torch.autograd.Function):
    """source -> rows @ source @ columns^T, with the backward rows^T @ grad @ columns.

    A function of its own so that autograd stores only the two small matrices: through
    torch.matmul it would also keep the (B, C, H, w) intermediate product. The backward is
    made of differentiable products, so gradients of any order follow.
    """

    @staticmethod
    def forward(ctx, source, rows, columns):
        ctx.save_for_backward(rows, columns)
        return _resize(source, rows, columns)

    @staticmethod
    def backward(ctx, grad):
        rows, columns = ctx.saved_tensors
        # under autocast the forward's products ran, and the gradient comes, in the lower
        # precision; autograd casts the result to the source's dtype
        rows, columns = rows.to(grad.dtype), columns.to(grad.dtype)
        return _resize(grad, rows.t(), columns.t()), None, None


class _Resizer:
    """The bicubic resize from source's size to ``size`` and its adjoint: the compiled ops
    where they serve source's device, else products with the resize matrices."""

    def __init__(self, source: torch.Tensor, size):
        self.input_size, self.size = tuple(source.shape[-2:]), tuple(size)
        self.matrices = None if ext_available(source.device) else resize_matrices(source, size)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.matrices is None:
            return compiled_bicubic_resize(x, self.size)
        return _SeparableResize.apply(x, *self.matrices)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The resize's adjoint (its gradient), differentiable."""
        if self.matrices is None:
            return bicubic_resize_transpose(y, self.input_size)
        rows, columns = self.matrices
        return _resize(y, rows.t().to(y.dtype), columns.t().to(y.dtype))


def resized_adaptive_conv(source: torch.Tensor, kernel: torch.Tensor,
                          padding_mode: str) -> torch.Tensor:
    """``adaptive_conv(bicubic(source to kernel's (H, W)), kernel, padding_mode)``, a few
    channels at a time, so that the resized features (B, C, H, W) are never held whole.

    The resized features are a JBU stage's largest tensor, and the aggregation's backward
    needs them: the forward resizes and aggregates one chunk of channels after another,
    and the backward resizes each chunk again for the kernel gradient, taking the features
    gradient through the aggregation's and the resize's adjoints chunk by chunk. Besides
    the memory this saves a stage's large allocations (on CPU each one that exceeds the
    allocator's reuse threshold costs its page faults, once more than the arithmetic on
    it) and keeps each chunk in the caches. Same numbers as resizing first, up to
    round-off; gradients of any order (the backward is made of differentiable ops).

    Args:
        source: (B, C, h, w).
        kernel: (B, k*k, H, W), same dtype and device.
        padding_mode: as in :func:`featup_mmseg.ops.adaptive_conv`.
    """
    aggregation = ResizedAggregation(source, kernel, padding_mode)
    return _ResizedAdaptiveConv.apply(source, kernel, aggregation)


class ResizedAggregation:
    """The forward and backward of :func:`resized_adaptive_conv` for one source and kernel
    shape, for autograd Functions that keep (or recompute) source and kernel their own way.

    Args:
        source: (B, C, h, w).
        kernel: (B, k*k, H, W), same dtype and device.
        padding_mode: as in :func:`featup_mmseg.ops.adaptive_conv`.
    """

    def __init__(self, source: torch.Tensor, kernel: torch.Tensor, padding_mode: str):
        if kernel.dim() != 4 or source.dim() != 4 or kernel.shape[0] != source.shape[0]:
            raise ValueError('resized_adaptive_conv: source (B, C, h, w) and kernel '
                             '(B, k*k, H, W) must be 4-D with the same batch, got '
                             f'{tuple(source.shape)} and {tuple(kernel.shape)}')
        self.resizer = _Resizer(source, kernel.shape[-2:])
        self.padding_mode = padding_mode
        batch, _, height, width = kernel.shape
        if takes_cpu_path(source.device):
            # one batch element per chunk: its channel slices are contiguous, so neither the
            # ops nor the gradient's chunks copy them
            limit, batch_per_chunk = RESIZED_CHUNK_BYTES, 1
        else:
            limit, batch_per_chunk = ACCELERATOR_RESIZED_CHUNK_BYTES, batch
        chunk_bytes = max(batch_per_chunk * height * width * source.element_size(), 1)
        self.chunks = _chunks(batch, batch_per_chunk, source.shape[1],
                              max(1, limit // chunk_bytes))

    def forward(self, source: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """The aggregation of the resized source (B, C, H, W)."""
        resizer, mode = self.resizer, self.padding_mode
        batch, channels = source.shape[:2]
        out = source.new_empty((batch, channels, *kernel.shape[-2:]))
        for samples, channel_range in self.chunks:
            resized = resizer.resize(source[samples, channel_range])
            target = out[samples, channel_range]
            if target.is_contiguous():  # a chunk of one batch element: written in place
                adaptive_conv(resized, kernel[samples], mode, out=target)
            else:
                target.copy_(adaptive_conv(resized, kernel[samples], mode))
        return out

    def backward(self, grad: torch.Tensor, source: torch.Tensor, kernel: torch.Tensor,
                 needs_source: bool, needs_kernel: bool):
        """(source's gradient, kernel's gradient) from the output's ``grad``, each None
        where not needed; differentiable where grad mode is on (create_graph)."""
        resizer, mode = self.resizer, self.padding_mode
        kernel_size = math.isqrt(kernel.shape[1])
        # one chunk (as on accelerators, up to the chunk size): its gradient is the source's
        whole = len(self.chunks) == 1
        grad_source = torch.empty_like(source) if needs_source and not whole else None
        # The kernel gradient of each batch range, summed over its channel chunks: in place
        # (the first chunk writes it, the others add to it), unless this backward must be
        # differentiable (create_graph), which the in-place ops are not.
        in_place = needs_kernel and not torch.is_grad_enabled()
        grad_kernel = (torch.zeros_like(kernel) if not self.chunks  # no channels
                       else torch.empty_like(kernel)) if in_place else None
        grad_kernels = {}
        for samples, channel_range in self.chunks:
            # contiguous once here, not in each of the two ops (a no-op for the chunks of
            # one batch element of a contiguous gradient)
            grad_chunk = grad[samples, channel_range].contiguous()
            if needs_kernel:
                resized = resizer.resize(source[samples, channel_range])
                key = (samples.start, samples.stop)
                if in_place:
                    window_cross_correlation(grad_chunk, resized, kernel_size, mode,
                                             out=grad_kernel[samples],
                                             accumulate=key in grad_kernels)
                    grad_kernels[key] = None
                else:
                    part = window_cross_correlation(grad_chunk, resized, kernel_size, mode)
                    grad_kernels[key] = part if key not in grad_kernels else \
                        grad_kernels[key].add_(part)
            if needs_source:
                part = resizer.adjoint(adaptive_conv_transpose(grad_chunk, kernel[samples], mode))
                if whole:
                    grad_source = part
                else:
                    grad_source[samples, channel_range] = part
        if needs_kernel and not in_place:
            parts = list(grad_kernels.values())
            grad_kernel = (torch.zeros_like(kernel) if not parts  # no channels
                           else parts[0] if len(parts) == 1 else torch.cat(parts))
        return grad_source, grad_kernel


class _ResizedAdaptiveConv(torch.autograd.Function):

    @staticmethod
    def forward(ctx, source, kernel, aggregation):
        ctx.save_for_backward(source, kernel)
        ctx.aggregation = aggregation
        return aggregation.forward(source, kernel)

    @staticmethod
    def backward(ctx, grad):
        source, kernel = ctx.saved_tensors
        return (*ctx.aggregation.backward(grad, source, kernel, *ctx.needs_input_grad[:2]),
                None)


def _chunks(batch: int, batch_per_chunk: int, channels: int, channels_per_chunk: int):
    """(batch slice, channel slice) of every chunk, batch-major."""
    return [(slice(first, min(first + batch_per_chunk, batch)),
             slice(start, min(start + channels_per_chunk, channels)))
            for first in range(0, batch, batch_per_chunk)
            for start in range(0, channels, channels_per_chunk)]
