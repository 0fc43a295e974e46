"""Python API of the window ops (spec section 1).

The compiled kernels live in ``featup_mmseg._ext`` and are registered with the PyTorch
dispatcher as ``torch.ops.featup_mmseg.*``; this module adds their fake (meta) kernels and
autograd formulas, so ``torch.compile(fullgraph=True)`` and ``torch.export`` trace through
them. Without the extension (or without its CUDA kernels for a CUDA tensor) the same API
runs the pure-PyTorch reference of :mod:`featup_mmseg.ops.reference`, after one warning.
"""
import contextlib
import math
import threading
import warnings
from typing import Iterator, Optional, Union

import torch
import torch.nn.functional as F

from .reference import adaptive_conv_reference, window_correlation_reference

PADDING_MODES = ('reflect', 'zeros', 'replicate')
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _load_extension():
    try:
        from featup_mmseg import _ext
    except ImportError as err:
        warnings.warn(
            f'featup_mmseg._ext could not be imported ({err}); featup_mmseg.ops falls back to '
            'the pure-PyTorch reference ops, which are much slower and use far more memory. '
            'Build it with `pip install --no-build-isolation -e .` (or `make`).',
            RuntimeWarning, stacklevel=2)
        return None
    return _ext


_ext = _load_extension()
_warned_devices = set()
_forced_reference = threading.local()


def ext_available(device: Optional[Union[str, torch.device]] = None) -> bool:
    """Whether the compiled kernels are in use (for tensors on ``device``, if given).

    ``False`` means the pure-PyTorch reference runs instead.
    """
    if _ext is None:
        return False
    if device is None:
        return True
    device_type = torch.device(device).type
    return device_type == 'cpu' or (device_type == 'cuda' and _ext.compiled_with_cuda())


@contextlib.contextmanager
def use_reference_ops() -> Iterator[None]:
    """Runs the pure-PyTorch reference ops inside the block, even where the compiled
    kernels are available (for debugging and side-by-side measurements)."""
    previous = getattr(_forced_reference, 'active', False)
    _forced_reference.active = True
    try:
        yield
    finally:
        _forced_reference.active = previous


def _use_ext(device: torch.device) -> bool:
    if getattr(_forced_reference, 'active', False):
        return False
    if ext_available(device):
        return True
    if _ext is not None and device.type not in _warned_devices:
        _warned_devices.add(device.type)
        warnings.warn(
            f'featup_mmseg._ext has no {device.type} kernels (built without them); using the '
            f'pure-PyTorch reference ops for {device.type} tensors. For CUDA, rebuild with a '
            'CUDA toolkit present (FORCE_CUDA=1 pip install --no-build-isolation -e .).',
            RuntimeWarning, stacklevel=3)
    return False


# ----------------------------------------------------------------------------------------
# argument checks (shared by the compiled path and the reference fallback)

def _check_map(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{op}: {name} must be a torch.Tensor, got {type(t).__name__}')
    if t.dim() != 4:
        raise ValueError(f'{op}: {name} must be a 4-D (B, C, H, W) tensor, '
                         f'got shape {tuple(t.shape)}')
    if t.dtype not in _DTYPES:
        raise ValueError(f'{op}: {name} must be float32, float64, float16 or bfloat16, '
                         f'got {t.dtype}')


def _check_same_place(op: str, name: str, t: torch.Tensor, ref_name: str,
                      ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f'{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; '
                         'move both to the same device')
    if t.dtype != ref.dtype:
        raise ValueError(f'{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; '
                         'cast both to the same dtype')


def _check_window(op: str, kernel_size, padding_mode, height: int, width: int) -> None:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f'{op}: padding_mode must be one of {PADDING_MODES}, '
                         f'got {padding_mode!r}')
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) \
            or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'{op}: kernel_size must be a positive odd int, got {kernel_size!r}')
    radius = kernel_size // 2
    if padding_mode == 'reflect' and (radius >= height or radius >= width):
        raise ValueError(
            f'{op}: reflect padding needs kernel_size // 2 < H and < W, got kernel_size '
            f'{kernel_size} for spatial size ({height}, {width}); use a smaller kernel, a '
            "larger input or padding_mode='zeros'/'replicate'")


def _kernel_size_from_taps(op: str, taps: int) -> int:
    kernel_size = math.isqrt(taps)
    if kernel_size * kernel_size != taps or kernel_size % 2 == 0:
        raise ValueError(f'{op}: kernel must have k*k channels for an odd k '
                         f'(9, 25, 49, ...), got {taps}')
    return kernel_size


# ----------------------------------------------------------------------------------------
# public API

def window_correlation(q: torch.Tensor, kernel_size: int = 7,
                       padding_mode: str = 'reflect') -> torch.Tensor:
    """Dot products of every key with the keys of its k x k window.

    ``logits[b, p, y, x] = sum_d q[b, d, y, x] * q~[b, d, y + i - r, x + j - r]`` for tap
    ``p = i*k + j``, where ``q~`` extends ``q`` beyond its borders by ``padding_mode``
    ('reflect', 'zeros' or 'replicate').

    Args:
        q: keys, (B, D, H, W), float32/float64/float16/bfloat16.
        kernel_size: odd window size k.
        padding_mode: border handling.

    Returns:
        (B, k*k, H, W) tensor of q's dtype.
    """
    op = 'window_correlation'
    _check_map(op, 'q', q)
    _check_window(op, kernel_size, padding_mode, q.shape[2], q.shape[3])
    if _use_ext(q.device):
        return torch.ops.featup_mmseg.window_correlation(q, kernel_size, padding_mode)
    return window_correlation_reference(q, kernel_size, padding_mode)


def adaptive_conv(x: torch.Tensor, kernel: torch.Tensor,
                  padding_mode: str = 'reflect') -> torch.Tensor:
    """Convolution of ``x`` with a k x k kernel that varies per pixel.

    ``out[b, c, y, x] = sum_p kernel[b, p, y, x] * x~[b, c, y + i - r, x + j - r]`` for tap
    ``p = i*k + j``, where ``x~`` extends ``x`` beyond its borders by ``padding_mode``.

    Args:
        x: features, (B, C, H, W).
        kernel: (B, k*k, H, W) with odd k, same dtype and device as ``x``. FeatUp's layout
            is accepted too: ``kernel`` (B, H, W, k, k) with ``x`` already padded to
            (B, C, H + 2r, W + 2r); ``padding_mode`` is then unused (the caller padded).
        padding_mode: 'reflect', 'zeros' or 'replicate'.

    Returns:
        (B, C, H, W) tensor of x's dtype.
    """
    op = 'adaptive_conv'
    if isinstance(kernel, torch.Tensor) and kernel.dim() == 5:
        return _adaptive_conv_featup_layout(x, kernel)
    _check_map(op, 'x', x)
    _check_map(op, 'kernel', kernel)
    _check_same_place(op, 'kernel', kernel, 'x', x)
    batch, _, height, width = x.shape
    if kernel.shape[0] != batch or kernel.shape[2:] != x.shape[2:]:
        raise ValueError(f'{op}: kernel must have shape (B, k*k, H, W) = '
                         f'({batch}, k*k, {height}, {width}) to match x of shape '
                         f'{tuple(x.shape)}, got {tuple(kernel.shape)}')
    kernel_size = _kernel_size_from_taps(op, kernel.shape[1])
    _check_window(op, kernel_size, padding_mode, height, width)
    if _use_ext(x.device):
        return torch.ops.featup_mmseg.adaptive_conv(x, kernel, padding_mode)
    return adaptive_conv_reference(x, kernel, padding_mode)


def _adaptive_conv_featup_layout(x_padded: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """FeatUp's AdaptiveConv convention: pre-padded input, (B, H, W, k, k) kernel."""
    op = 'adaptive_conv'
    _check_map(op, 'x', x_padded)
    _check_same_place(op, 'kernel', kernel, 'x', x_padded)
    batch, height, width, kernel_size, kernel_size_w = kernel.shape
    radius = kernel_size // 2
    if kernel_size != kernel_size_w or kernel_size % 2 == 0:
        raise ValueError(f'{op}: a 5-D kernel must be (B, H, W, k, k) with odd k, '
                         f'got {tuple(kernel.shape)}')
    expected = (batch, x_padded.shape[1], height + 2 * radius, width + 2 * radius)
    if tuple(x_padded.shape) != expected:
        raise ValueError(f'{op}: with a (B, H, W, k, k) kernel, x must be padded by k // 2 on '
                         f'each side, i.e. have shape (B, C, H + 2r, W + 2r) = {expected}, '
                         f'got {tuple(x_padded.shape)}')
    taps = kernel.permute(0, 3, 4, 1, 2).reshape(batch, kernel_size * kernel_size, height, width)
    # Zero taps on the padding ring: outputs there are cropped away, and every output
    # inside reads only the caller's padded input, exactly as FeatUp's kernel does.
    taps = F.pad(taps, [radius] * 4)
    out = adaptive_conv(x_padded, taps, padding_mode='zeros')
    return out[:, :, radius:radius + height, radius:radius + width].contiguous()


# ----------------------------------------------------------------------------------------
# dispatcher registrations: fake kernels for tracing, autograd formulas

def _register_fake_and_autograd() -> None:
    lib = 'featup_mmseg::'

    @torch.library.register_fake(lib + 'window_correlation')
    def _(keys, kernel_size, padding_mode):
        batch, _, height, width = keys.shape
        return keys.new_empty((batch, kernel_size * kernel_size, height, width))

    @torch.library.register_fake(lib + 'window_correlation_backward')
    def _(grad, keys, kernel_size, padding_mode):
        return torch.empty_like(keys, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + 'adaptive_conv')
    def _(features, kernel, padding_mode):
        return torch.empty_like(features, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + 'adaptive_conv_backward_features')
    def _(grad, kernel, padding_mode):
        return torch.empty_like(grad, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + 'adaptive_conv_backward_kernel')
    def _(grad, features, kernel_size, padding_mode):
        batch, _, height, width = features.shape
        return features.new_empty((batch, kernel_size * kernel_size, height, width))

    def window_correlation_setup(ctx, inputs, output):
        keys, ctx.kernel_size, ctx.padding_mode = inputs
        ctx.save_for_backward(keys)

    def window_correlation_grad(ctx, grad):
        keys, = ctx.saved_tensors
        grad_keys = torch.ops.featup_mmseg.window_correlation_backward(
            grad, keys, ctx.kernel_size, ctx.padding_mode)
        return grad_keys, None, None

    def adaptive_conv_setup(ctx, inputs, output):
        features, kernel, ctx.padding_mode = inputs
        ctx.kernel_size = math.isqrt(kernel.shape[1])
        ctx.save_for_backward(features, kernel)

    def adaptive_conv_grad(ctx, grad):
        features, kernel = ctx.saved_tensors
        grad_features = grad_kernel = None
        if ctx.needs_input_grad[0]:
            grad_features = torch.ops.featup_mmseg.adaptive_conv_backward_features(
                grad, kernel, ctx.padding_mode)
        if ctx.needs_input_grad[1]:
            grad_kernel = torch.ops.featup_mmseg.adaptive_conv_backward_kernel(
                grad, features, ctx.kernel_size, ctx.padding_mode)
        return grad_features, grad_kernel, None

    torch.library.register_autograd(lib + 'window_correlation', window_correlation_grad,
                                    setup_context=window_correlation_setup)
    torch.library.register_autograd(lib + 'adaptive_conv', adaptive_conv_grad,
                                    setup_context=adaptive_conv_setup)


if _ext is not None:
    _register_fake_and_autograd()
