"""Python API of the window ops (FeatUp's adaptive convolution and its range-kernel
correlation, paper section 3.2), of a JBU stage's fused normalised range kernel, of the
cross-scale neighbourhood attention ops and of the bicubic resize.

The compiled kernels live in ``featup_mmseg._ext`` and are registered with the PyTorch
dispatcher as ``torch.ops.featup_mmseg.*``. Their autograd is chosen once, at import, by
what the installed torch can do (``REGISTRATION``):

- 'dispatcher' (torch >= 2.4): fake kernels and autograd formulas registered with the
  dispatcher, so ``torch.compile(fullgraph=True)`` and ``torch.export`` trace the ops;
- 'autograd_function' (torch 2.1 to 2.3, or ``FEATUP_MMSEG_LEGACY_OPS=1``): the same kernels
  behind ``torch.autograd.Function`` (fake kernels through ``impl_abstract`` where it exists);
- 'reference': no extension; the pure-PyTorch ops of :mod:`featup_mmseg.ops.reference` run
  instead, after one warning (as they do for a device the extension was built without).

Both compiled paths share one set of derivative rules and give gradients of any order.
"""
import contextlib
import math
import os
import sys
import threading
import types
import warnings
from typing import Iterator, Optional, Union

import torch
import torch.nn.functional as F

from .reference import (adaptive_conv_reference, adaptive_conv_transpose_reference,
                        bicubic_resize_reference, bicubic_resize_transpose_reference,
                        neighbourhood_attention_aggregate_reference,
                        neighbourhood_attention_scores_reference,
                        neighbourhood_attention_transpose_reference,
                        normalized_range_kernel_reference, window_correlation_reference,
                        window_cross_correlation_reference)

PADDING_MODES = ('reflect', 'zeros', 'replicate')
NEIGHBOURHOOD_BORDERS = ('shift', 'clamp')
RANGE_VARIANTS = ('softmax', 'gaussian_euclidean', 'gaussian_cosine')
# Set to 1 to run the compiled kernels behind torch.autograd.Function (the path taken on
# torch < 2.4) instead of the dispatcher registrations, e.g. to test both on one stack.
LEGACY_OPS_ENV = 'FEATUP_MMSEG_LEGACY_OPS'
_LIBRARY = 'featup_mmseg::'
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _installed_copy_with_extension() -> Optional[str]:
    """Another featup_mmseg on sys.path, with a compiled _ext, than the one imported: an
    installed package shadowed by a source checkout without its build (Python puts the
    current directory first on sys.path)."""
    import glob
    import importlib.machinery
    here = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for entry in sys.path:
        package = os.path.realpath(os.path.join(entry or os.getcwd(), 'featup_mmseg'))
        if package != here and any(
                glob.glob(os.path.join(package, '_ext' + suffix))
                for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            return package
    return None


def _load_extension():
    try:
        from featup_mmseg import _ext
    except ImportError as err:
        installed = _installed_copy_with_extension()
        if installed is not None:
            here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            raise ImportError(
                f'featup_mmseg was imported from {here}, which has no compiled '
                f'featup_mmseg._ext, instead of the installed package at {installed}, which '
                'has it: Python puts the current directory first on sys.path. Run from '
                'outside the source checkout, or build it in place with `pip install '
                '--no-build-isolation -e .`') from err
        warnings.warn(
            f'featup_mmseg._ext could not be imported ({err}); featup_mmseg.ops falls back to '
            'the pure-PyTorch reference ops, which are much slower and use far more memory. '
            'Build it with `pip install --no-build-isolation -e .` (or `make`).',
            RuntimeWarning, stacklevel=2)
        return None
    return _ext


_ext = _load_extension()
# Plain booleans: TorchDynamo (torch < 2.4) cannot compare a module with None.
_HAS_EXT = _ext is not None
_HAS_CUDA_KERNELS = _HAS_EXT and _ext.compiled_with_cuda()


def _devices_with_kernel(name: str) -> tuple:
    """The device types ('cpu', 'cuda') for which the extension has a kernel of op ``name``
    (CUDA only where the extension was built with its CUDA kernels)."""
    if not _HAS_EXT:
        return ()
    return tuple(device for device, key in (('cpu', 'CPU'), ('cuda', 'CUDA'))
                 if torch._C._dispatch_has_kernel_for_dispatch_key(_LIBRARY + name, key))


_RANGE_KERNEL_DEVICES = _devices_with_kernel('normalized_range_kernel')
# The CUDA range kernel keeps a pixel's taps in per-thread arrays of a fixed size; larger
# windows take the composition of the window ops.
_MAX_CUDA_RANGE_KERNEL_SIZE = 15
_warned_devices = set()
# Process-wide, not per thread: autograd runs CUDA backward passes, and the recomputation
# of checkpointed code within them, in threads of its own, which must run the same ops.
_forced_reference_depth = 0
_forced_reference_lock = threading.Lock()


def ext_available(device: Optional[Union[str, torch.device]] = None) -> bool:
    """Whether the compiled kernels are in use (for tensors on ``device``, if given).

    ``False`` means the pure-PyTorch reference runs instead.
    """
    if not _HAS_EXT:
        return False
    if device is None:
        return True
    device_type = torch.device(device).type
    return device_type == 'cpu' or (device_type == 'cuda' and _HAS_CUDA_KERNELS)


@contextlib.contextmanager
def use_reference_ops() -> Iterator[None]:
    """Runs the pure-PyTorch reference ops inside the block, even where the compiled
    kernels are available (for debugging and side-by-side measurements). It holds for the
    whole process while the block runs, backward passes in autograd's threads included."""
    global _forced_reference_depth
    with _forced_reference_lock:
        _forced_reference_depth += 1
    try:
        yield
    finally:
        with _forced_reference_lock:
            _forced_reference_depth -= 1


def _use_ext(device: torch.device) -> bool:
    if _forced_reference_depth:
        return False
    if ext_available(device):
        return True
    if _HAS_EXT and device.type not in _warned_devices:
        _warned_devices.add(device.type)
        warnings.warn(
            f'featup_mmseg._ext has no {device.type} kernels (built without them); using the '
            f'pure-PyTorch reference ops for {device.type} tensors. For CUDA, rebuild with a '
            'CUDA toolkit present (FORCE_CUDA=1 pip install --no-build-isolation -e .).',
            RuntimeWarning, stacklevel=3)
    return False


# ----------------------------------------------------------------------------------------
# argument checks (shared by the compiled path and the reference fallback)

def _check_map(op: str, name: str, t, layout: str = '4-D (B, C, H, W)') -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{op}: {name} must be a torch.Tensor, got {type(t).__name__}')
    if t.layout != torch.strided:
        raise ValueError(f'{op}: {name} must be a dense (strided) tensor, got {t.layout}; '
                         'call .to_dense() first')
    if t.dim() != 4:
        raise ValueError(f'{op}: {name} must be a {layout} tensor, got shape {tuple(t.shape)}')
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


def _check_out(op: str, out, shape, like: torch.Tensor, inputs) -> None:
    """``out``: a contiguous tensor of the result's shape, dtype and device, and no
    gradient to track (an op writing into a given tensor is not differentiable)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f'{op}: out must be a torch.Tensor, got {type(out).__name__}')
    if out.device != like.device or out.dtype != like.dtype:
        raise ValueError(f'{op}: out must be a {like.dtype} tensor on {like.device}, got '
                         f'{out.dtype} on {out.device}')
    if tuple(out.shape) != tuple(shape) or not out.is_contiguous():
        raise ValueError(f'{op}: out must be a contiguous tensor of shape {tuple(shape)}, got '
                         f'shape {tuple(out.shape)}'
                         + ('' if out.is_contiguous() else ' (not contiguous)'))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (out, *inputs)):
        raise ValueError(f'{op}: out= does not support autograd; call it under '
                         'torch.no_grad() or leave out out')


def _check_onnx_export(op: str, t: torch.Tensor) -> None:
    """Under torch.onnx's TorchScript exporter, refuses a compiled op (for tensors like
    ``t``) it cannot translate, before tracing goes on (torch would fail at the end,
    printing the whole traced graph, with "unrecognized namespace featup_mmseg"). The
    reference ops are plain PyTorch: they export as they are."""
    if not (torch.jit.is_tracing() and torch.onnx.is_in_onnx_export()) or \
            _forced_reference_depth or not ext_available(t.device):
        return
    from .onnx_export import TRANSLATED_OPS, translations_registered
    if op not in TRANSLATED_OPS:
        raise RuntimeError(f'featup_mmseg.ops.{op} has no ONNX translation; exported models '
                           f'can use {", ".join(TRANSLATED_OPS)}')
    if not translations_registered():
        raise RuntimeError(
            f'torch.onnx.export (TorchScript exporter) met featup_mmseg.ops.{op}, whose ONNX '
            'translation is not registered: call featup_mmseg.ops.onnx_export.'
            'register_onnx_translations() before exporting (importing featup_mmseg.plugin '
            'does it), or export with featup_mmseg.ops.onnx_export.export_onnx')


def _kernel_size_from_taps(op: str, taps: int) -> int:
    kernel_size = math.isqrt(taps)
    if kernel_size * kernel_size != taps or kernel_size % 2 == 0:
        raise ValueError(f'{op}: kernel must have k*k channels for an odd k '
                         f'(9, 25, 49, ...), got {taps}')
    return kernel_size


def _check_features_and_kernel(op: str, name: str, features, kernel, padding_mode,
                               kernel_layout: str) -> None:
    """The checks of an adaptive_conv-style op on features (B, C, H, W) and their
    per-pixel kernel (B, k*k, H, W)."""
    _check_map(op, name, features)
    _check_map(op, 'kernel', kernel, kernel_layout)
    _check_same_place(op, 'kernel', kernel, name, features)
    batch, _, height, width = features.shape
    if kernel.shape[0] != batch or kernel.shape[2:] != features.shape[2:]:
        raise ValueError(f'{op}: kernel must have shape (B, k*k, H, W) = '
                         f'({batch}, k*k, {height}, {width}) to match {name} of shape '
                         f'{tuple(features.shape)}, got {tuple(kernel.shape)}')
    kernel_size = _kernel_size_from_taps(op, kernel.shape[1])
    _check_window(op, kernel_size, padding_mode, height, width)


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
    _check_onnx_export(op, q)
    _check_window(op, kernel_size, padding_mode, q.shape[2], q.shape[3])
    if _use_ext(q.device):
        return _compiled_ops.window_correlation(q, kernel_size, padding_mode)
    return window_correlation_reference(q, kernel_size, padding_mode)


def window_cross_correlation(queries: torch.Tensor, keys: torch.Tensor, kernel_size: int = 7,
                             padding_mode: str = 'reflect', *,
                             out: Optional[torch.Tensor] = None,
                             accumulate: bool = False) -> torch.Tensor:
    """Dot products of every query with the keys of the k x k window at its position.

    ``logits[b, p, y, x] = sum_d queries[b, d, y, x] * keys~[b, d, y + i - r, x + j - r]`` for
    tap ``p = i*k + j``, where ``keys~`` extends ``keys`` beyond its borders by
    ``padding_mode``. ``window_correlation(q)`` is ``window_cross_correlation(q, q)``.

    Args:
        queries: (B, D, H, W), float32/float64/float16/bfloat16.
        keys: (B, D, H, W), same dtype and device as ``queries``.
        kernel_size: odd window size k.
        padding_mode: 'reflect', 'zeros' or 'replicate'.
        out: optional contiguous (B, k*k, H, W) tensor of the inputs' dtype and device to
            write the result into (then returned), without autograd; e.g. a kernel
            gradient summed over channel chunks.
        accumulate: with ``out``, add the result to what ``out`` holds.

    Returns:
        (B, k*k, H, W) tensor of the inputs' dtype.
    """
    op = 'window_cross_correlation'
    _check_map(op, 'queries', queries)
    _check_onnx_export(op, queries)
    _check_map(op, 'keys', keys)
    _check_same_place(op, 'keys', keys, 'queries', queries)
    if keys.shape != queries.shape:
        raise ValueError(f'{op}: queries and keys must have the same shape (B, D, H, W), got '
                         f'{tuple(queries.shape)} and {tuple(keys.shape)}')
    _check_window(op, kernel_size, padding_mode, keys.shape[2], keys.shape[3])
    if not isinstance(accumulate, bool):
        raise TypeError(f'{op}: accumulate must be a bool, got {type(accumulate).__name__}')
    if out is not None:
        _check_out(op, out, (keys.shape[0], kernel_size**2, *keys.shape[2:]), keys,
                   (queries, keys))
        if _use_ext(keys.device):
            torch.ops.featup_mmseg.adaptive_conv_backward_kernel_out(
                queries, keys, kernel_size, padding_mode, out, accumulate)
            return out
        result = window_cross_correlation_reference(queries, keys, kernel_size, padding_mode)
        return out.add_(result) if accumulate else out.copy_(result)
    if accumulate:
        raise ValueError(f'{op}: accumulate=True needs out (the tensor to add to)')
    if _use_ext(keys.device):
        # The kernel-gradient op of adaptive_conv is this correlation (its grad_out plays the
        # queries), with autograd of any order already registered.
        return _compiled_ops.adaptive_conv_backward_kernel(queries, keys, kernel_size,
                                                           padding_mode)
    return window_cross_correlation_reference(queries, keys, kernel_size, padding_mode)


def adaptive_conv(x: torch.Tensor, kernel: torch.Tensor, padding_mode: Optional[str] = None, *,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Convolution of ``x`` with a k x k kernel that varies per pixel.

    ``out[b, c, y, x] = sum_p kernel[b, p, y, x] * x~[b, c, y + i - r, x + j - r]`` for tap
    ``p = i*k + j``, where ``x~`` extends ``x`` beyond its borders by ``padding_mode``.

    Args:
        x: features, (B, C, H, W).
        kernel: (B, k*k, H, W) with odd k, same dtype and device as ``x``. FeatUp's layout
            is accepted too: ``kernel`` (B, H, W, k, k) with ``x`` already padded to
            (B, C, H + 2r, W + 2r); ``padding_mode`` must then be left out (the caller
            padded).
        padding_mode: 'reflect' (the default), 'zeros' or 'replicate'.
        out: optional contiguous (B, C, H, W) tensor of x's dtype and device to write the
            result into (then returned), without autograd; e.g. a channel slice of a
            larger result.

    Returns:
        (B, C, H, W) tensor of x's dtype.
    """
    op = 'adaptive_conv'
    if isinstance(kernel, torch.Tensor) and kernel.dim() == 5:
        if out is not None:
            raise ValueError(f"{op}: out is not supported with FeatUp's 5-D kernel layout")
        if padding_mode is not None:
            raise ValueError(f'{op}: padding_mode does not apply to FeatUp\'s layout (a 5-D '
                             f'kernel with x already padded), got {padding_mode!r}; leave it '
                             'out, or pass an unpadded x with a (B, k*k, H, W) kernel')
        return _adaptive_conv_featup_layout(x, kernel)
    if padding_mode is None:
        padding_mode = 'reflect'
    _check_features_and_kernel(op, 'x', x, kernel, padding_mode,
                               "4-D (B, k*k, H, W) (or FeatUp's 5-D (B, H, W, k, k))")
    _check_onnx_export(op, x)
    if out is not None:
        _check_out(op, out, x.shape, x, (x, kernel))
        if _use_ext(x.device):
            torch.ops.featup_mmseg.adaptive_conv_out(x, kernel, padding_mode, out)
            return out
        return out.copy_(adaptive_conv_reference(x, kernel, padding_mode))
    if _use_ext(x.device):
        return _compiled_ops.adaptive_conv(x, kernel, padding_mode)
    return adaptive_conv_reference(x, kernel, padding_mode)


def adaptive_conv_transpose(y: torch.Tensor, kernel: torch.Tensor,
                            padding_mode: str = 'reflect') -> torch.Tensor:
    """The adjoint (transpose) of :func:`adaptive_conv` in its features, for a fixed kernel.

    ``<adaptive_conv(x, kernel), y> = <x, adaptive_conv_transpose(y, kernel)>`` for every x:
    each output value of ``y`` is spread back over its k x k window with that pixel's taps,
    and what lands beyond the border is folded back in by ``padding_mode``. This is the
    features gradient of adaptive_conv, for callers that write their own backward (e.g.
    over a channel chunk at a time).

    Args:
        y: (B, C, H, W), float32/float64/float16/bfloat16.
        kernel: (B, k*k, H, W) with odd k, same dtype and device as ``y``.
        padding_mode: 'reflect', 'zeros' or 'replicate'.

    Returns:
        (B, C, H, W) tensor of y's dtype.
    """
    _check_features_and_kernel('adaptive_conv_transpose', 'y', y, kernel, padding_mode,
                               '4-D (B, k*k, H, W)')
    _check_onnx_export('adaptive_conv_transpose', y)
    if _use_ext(y.device):
        return _compiled_ops.adaptive_conv_backward_features(y, kernel, padding_mode)
    return adaptive_conv_transpose_reference(y, kernel, padding_mode)


def normalized_range_kernel(keys: torch.Tensor, range_param: torch.Tensor,
                            sigma_spatial: torch.Tensor, kernel_size: int = 7,
                            variant: str = 'softmax',
                            padding_mode: str = 'reflect') -> torch.Tensor:
    """A JBU stage's per-pixel kernel before its fixup, from its keys and its two scalar
    parameters: range kernel times spatial kernel, normalised over the taps, as one op.

    ``K[b, p] = R[b, p] * S[p] / clamp(sum_q R[b, q] * S[q], min=1e-7)``, where S is the
    spatial Gaussian ``exp(-(u_i^2 + u_j^2) / (2 sigma_spatial^2))`` of the tap offsets
    (u = linspace(-1, 1, k), tap p = i * k + j) and R a function of the window dot products
    ``<Q_c, Q~_p>`` (:func:`window_correlation`):

    - 'softmax' (FeatUp, and its ablation without the key MLP): softmax over the taps of
      ``t * <Q_c, Q~_p>``, t the temperature ``clamp(exp(range_param), 1e-4, 1e4)``
      (range_param is FeatUp's range_temp);
    - 'gaussian_euclidean': ``exp(-clamp_min(|Q_c|^2 + |Q~_p|^2 - 2 <Q_c, Q~_p>, 0) /
      (2 range_param^2))`` (range_param is sigma_range);
    - 'gaussian_cosine': ``exp(-(1 - <Q_c, Q~_p>) / (2 range_param^2))`` for keys the caller
      normalised to unit length (``F.normalize(keys, dim=1)``).

    With the compiled extension (CPU, and CUDA where built with it) one kernel forward and
    one backward (the gradients of keys and both parameters together) instead of about 30
    ops; without it, on CUDA for kernel_size above 15, under torch.jit.trace and in ONNX
    export (whose exporters translate the window ops), the same composition of the window
    ops (:func:`normalized_range_kernel_reference` over :func:`window_correlation`). Gradients
    of any order: the first through the backward kernel; where the backward itself is
    differentiated (create_graph), it recomputes the composition and differentiates that.

    Args:
        keys: (B, D, H, W), any floating dtype; half-precision keys are compared in
            float32 (they feed a sharp softmax or exponential) and K rounded to their dtype.
        range_param: 0-dim floating tensor on keys' device: range_temp for 'softmax',
            sigma_range for the Gaussians.
        sigma_spatial: 0-dim floating tensor on keys' device.
        kernel_size: odd window size k.
        variant: one of ``RANGE_VARIANTS``.
        padding_mode: the window's border handling: 'reflect' (FeatUp), 'zeros' or
            'replicate'.

    Returns:
        (B, k*k, H, W) tensor of keys' dtype; each gradient has its input's dtype.
    """
    op = 'normalized_range_kernel'
    _check_map(op, 'keys', keys)
    if variant not in RANGE_VARIANTS:
        raise ValueError(f'{op}: variant must be one of {RANGE_VARIANTS}, got {variant!r}')
    _check_window(op, kernel_size, padding_mode, keys.shape[2], keys.shape[3])
    for name, t in (('range_param', range_param), ('sigma_spatial', sigma_spatial)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{op}: {name} must be a torch.Tensor, got {type(t).__name__}')
        if t.dim() != 0 or not t.is_floating_point():
            raise ValueError(f'{op}: {name} must be a 0-dim floating tensor, got shape '
                             f'{tuple(t.shape)} and dtype {t.dtype}')
        if t.device != keys.device:
            raise ValueError(f'{op}: {name} is on {t.device} but keys is on {keys.device}; '
                             'move both to the same device')
    if _use_ext(keys.device) and keys.device.type in _RANGE_KERNEL_DEVICES \
            and (keys.device.type != 'cuda' or kernel_size <= _MAX_CUDA_RANGE_KERNEL_SIZE) \
            and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
        return _compiled_ops.normalized_range_kernel(keys, range_param, sigma_spatial,
                                                     kernel_size, variant, padding_mode)
    return normalized_range_kernel_reference(keys, range_param, sigma_spatial, kernel_size,
                                             variant, padding_mode, correlation=window_correlation)


def bicubic_resize(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bicubic', align_corners=False)``, with a compiled
    gradient.

    The same numbers up to round-off. Its backward gathers (no scatter, no atomics), and on
    CPU both directions are separable passes over four taps: several times faster than
    PyTorch's CPU bicubic backward, and than the resize as products with dense matrices.

    Args:
        x: (B, C, h, w), float32/float64/float16/bfloat16, h and w > 0.
        size: (H, W), positive ints.

    Returns:
        (B, C, H, W) tensor of x's dtype.
    """
    op = 'bicubic_resize'
    _check_map(op, 'x', x)
    size = _check_resize(op, 'x', x, 'size', size)
    if torch.jit.is_tracing():  # traces (FLOP counters, ONNX export) see the aten op
        return bicubic_resize_reference(x, size)
    if _use_ext(x.device):
        return _compiled_ops.bicubic_resize(x, size)
    return bicubic_resize_reference(x, size)


def bicubic_resize_transpose(y: torch.Tensor, input_size) -> torch.Tensor:
    """The adjoint (transpose) of :func:`bicubic_resize` from ``input_size`` to y's size.

    ``<bicubic_resize(x, y.shape[-2:]), y> = <x, bicubic_resize_transpose(y, x.shape[-2:])>``
    for every x: the resize's gradient, for callers that write their own backward.

    Args:
        y: (B, C, H, W), float32/float64/float16/bfloat16, H and W > 0.
        input_size: (h, w) of the resize's input, positive ints.

    Returns:
        (B, C, h, w) tensor of y's dtype.
    """
    op = 'bicubic_resize_transpose'
    _check_map(op, 'y', y)
    _check_onnx_export(op, y)
    input_size = _check_resize(op, 'y', y, 'input_size', input_size)
    if _use_ext(y.device):
        return _compiled_ops.bicubic_resize_backward(y, input_size)
    return bicubic_resize_transpose_reference(y, input_size)


# ----------------------------------------------------------------------------------------
# cross-scale neighbourhood attention

def _check_positive_int(op: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{op}: {name} must be an int >= 1, got {value!r}')


def _check_neighbourhood(op: str, kernel_size, dilation, border, input_size) -> None:
    """kernel_size, dilation and border for a low-res map of ``input_size`` (h, w)."""
    _check_positive_int(op, 'kernel_size', kernel_size)
    _check_positive_int(op, 'dilation', dilation)
    if border not in NEIGHBOURHOOD_BORDERS:
        raise ValueError(f'{op}: border must be one of {NEIGHBOURHOOD_BORDERS}, got {border!r}')
    if input_size[0] < 1 or input_size[1] < 1:
        raise ValueError(f'{op}: the low-res map must have a non-empty spatial size (h, w), '
                         f'got {tuple(input_size)}')
    extent = kernel_size * dilation
    if border == 'shift' and (extent > input_size[0] or extent > input_size[1]):
        raise ValueError(
            f"{op}: border 'shift' needs kernel_size * dilation = {extent} <= the low-res "
            f"map's height and width, got spatial size {tuple(input_size)}; use a "
            "smaller kernel_size or dilation, or border='clamp'")


def _check_attn(op: str, attn: torch.Tensor, other_name: str, other: torch.Tensor) -> int:
    """attn (N, k*k, H, W) beside ``other`` (N, C, *, *): returns k."""
    _check_map(op, 'attn', attn, '4-D (N, k*k, H, W)')
    _check_map(op, other_name, other, '4-D (N, C, *, *)')
    _check_same_place(op, other_name, other, 'attn', attn)
    if other.shape[0] != attn.shape[0]:
        raise ValueError(f'{op}: {other_name} must have batch size N = {attn.shape[0]} like '
                         f'attn, got shape {tuple(other.shape)}')
    kernel_size = math.isqrt(attn.shape[1])
    if kernel_size < 1 or kernel_size * kernel_size != attn.shape[1]:
        raise ValueError(f'{op}: attn must have k*k channels (1, 4, 9, ...), got shape '
                         f'{tuple(attn.shape)}')
    return kernel_size


def neighbourhood_attention_scores(queries: torch.Tensor, keys: torch.Tensor,
                                   kernel_size: int, dilation: int = 1,
                                   border: str = 'shift') -> torch.Tensor:
    """Dot products of high-res queries with the keys of their low-res k x k window.

    ``scores[n, t, y, x] = sum_c queries[n, c, y, x] * keys[n, c, row(y, ty), col(x, tx)]``
    for tap ``t = ty*k + tx``. Heads are folded into the batch by the caller; the softmax
    and any position encoding stay outside.

    Query row y sits on low-res row ``cy = floor((y + 1/2) * h / H)``, F.interpolate's
    'nearest-exact' (with which NAF and AnyUp upsample keys and values), and with
    ``d = dilation``:

    - ``border='shift'``: NATTEN's neighbourhood on the low-res map. ``row(y, ty) = cy % d
      + (s + ty) * d`` with ``s = clamp(cy // d - k // 2, 0, L - k)``, L the number of rows
      of cy's residue class modulo d: k rows of that class, centred on cy and moved to stay
      inside the map. Needs ``k * d <= h`` (and ``<= w``). For ``H = r * h`` with an integer
      r, NATTEN with kernel k and dilation ``r * d`` on keys and values nearest-upsampled
      to (H, W) (NAF's cross-scale attention, d = 1) reads exactly these cells: the
      upsampled rows of y's class modulo ``r * d`` are the low-res rows of cy's class
      modulo d, r times each. For a non-integer ratio (NAF's dilation is then H // h) NATTEN
      reads cells that are no window of the low-res map.
    - ``border='clamp'``: ``row(y, ty) = clamp(cy + (ty - k // 2) * d, 0, h - 1)``: taps
      beyond a border repeat the border row. AnyUp's masked attention keeps the cells within
      window_ratio of the query's pixel centre, cut at the borders; for ``window_ratio * h =
      k // 2`` an integer and d = 1 those are the taps whose unclamped row lies inside the
      map (a module masks the others before its softmax).

    Columns alike, with x, w and W.

    Args:
        queries: (N, D, H, W), float32/float64/float16/bfloat16.
        keys: (N, D, h, w), same dtype and device as ``queries``.
        kernel_size: window size k >= 1.
        dilation: step d >= 1 between the window's rows (columns).
        border: 'shift' or 'clamp'.

    Returns:
        (N, k*k, H, W) tensor of the inputs' dtype.
    """
    op = 'neighbourhood_attention_scores'
    _check_map(op, 'queries', queries, '4-D (N, D, H, W)')
    _check_map(op, 'keys', keys, '4-D (N, D, h, w)')
    _check_same_place(op, 'keys', keys, 'queries', queries)
    if keys.shape[:2] != queries.shape[:2]:
        raise ValueError(f'{op}: keys must have the batch size and channels (N, D) = '
                         f'{tuple(queries.shape[:2])} of queries, got shape '
                         f'{tuple(keys.shape)}')
    _check_neighbourhood(op, kernel_size, dilation, border, keys.shape[2:])
    _check_onnx_export(op, queries)
    if _use_ext(queries.device):
        return _compiled_ops.neighbourhood_attention_scores(queries, keys, kernel_size,
                                                            dilation, border)
    return neighbourhood_attention_scores_reference(queries, keys, kernel_size, dilation, border)


def neighbourhood_attention_aggregate(attn: torch.Tensor, values: torch.Tensor,
                                      dilation: int = 1, border: str = 'shift') -> torch.Tensor:
    """Attention weights of high-res queries applied to the values of their low-res window.

    ``out[n, c, y, x] = sum_t attn[n, t, y, x] * values[n, c, row(y, ty), col(x, tx)]``, the
    window as in :func:`neighbourhood_attention_scores`.

    Args:
        attn: (N, k*k, H, W), float32/float64/float16/bfloat16.
        values: (N, C, h, w), same dtype and device as ``attn``.
        dilation: step between the window's cells, >= 1.
        border: 'shift' or 'clamp'.

    Returns:
        (N, C, H, W) tensor of the inputs' dtype.
    """
    op = 'neighbourhood_attention_aggregate'
    kernel_size = _check_attn(op, attn, 'values', values)
    _check_neighbourhood(op, kernel_size, dilation, border, values.shape[2:])
    _check_onnx_export(op, attn)
    if _use_ext(attn.device):
        return _compiled_ops.neighbourhood_attention_aggregate(attn, values, dilation, border)
    return neighbourhood_attention_aggregate_reference(attn, values, dilation, border)


def neighbourhood_attention_transpose(attn: torch.Tensor, features: torch.Tensor, input_size,
                                      dilation: int = 1, border: str = 'shift') -> torch.Tensor:
    """The adjoint (transpose) of :func:`neighbourhood_attention_aggregate` in its values.

    ``<aggregate(attn, v), features> = <v, transpose(attn, features, v.shape[-2:])>`` for
    every v: each high-res feature, weighted by its taps, is scattered back onto the
    low-res cells its window reads. This is the values gradient of the aggregate and the
    keys gradient of the scores.

    Args:
        attn: (N, k*k, H, W), float32/float64/float16/bfloat16.
        features: (N, C, H, W), same dtype and device as ``attn``.
        input_size: (h, w) of the low-res map, positive ints.
        dilation: step between the window's cells, >= 1.
        border: 'shift' or 'clamp'.

    Returns:
        (N, C, h, w) tensor of the inputs' dtype.
    """
    op = 'neighbourhood_attention_transpose'
    kernel_size = _check_attn(op, attn, 'features', features)
    if features.shape[2:] != attn.shape[2:]:
        raise ValueError(f'{op}: features must have the spatial size (H, W) = '
                         f'{tuple(attn.shape[2:])} of attn, got shape {tuple(features.shape)}')
    input_size = _check_resize(op, 'features', features, 'input_size', input_size)
    _check_neighbourhood(op, kernel_size, dilation, border, input_size)
    _check_onnx_export(op, attn)
    if _use_ext(attn.device):
        return _compiled_ops.neighbourhood_attention_transpose(attn, features, input_size,
                                                               dilation, border)
    return neighbourhood_attention_transpose_reference(attn, features, input_size, dilation,
                                                       border)


def _check_resize(op: str, name: str, t: torch.Tensor, size_name: str, size) -> list:
    """``size`` as a list of two positive ints, and t's spatial size non-empty. Under
    torch.jit.trace, sizes read off tensors are 0-d integer tensors: kept as they are."""
    if isinstance(size, torch.Size):
        size = tuple(size)
    traced = torch.jit.is_tracing()

    def is_size(s) -> bool:
        if traced and isinstance(s, torch.Tensor) and s.dim() == 0 and \
                not s.is_floating_point():
            return True
        return not isinstance(s, bool) and isinstance(s, (int, torch.SymInt)) and s >= 1

    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(map(is_size, size)):
        raise ValueError(f'{op}: {size_name} must be two positive ints (H, W), got {size!r}')
    if t.shape[2] < 1 or t.shape[3] < 1:
        raise ValueError(f'{op}: {name} must have a non-empty spatial size, got shape '
                         f'{tuple(t.shape)}')
    return [int(s) if isinstance(s, int) else s for s in size]


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
# registration: derivative rules written once, over the compiled ops
#
# Every window and neighbourhood attention op is bilinear in its two tensor inputs, and the
# derivative of each one is again a combination of the ops of its family, so the rules below
# give gradients of any order on both registration paths (forward, backward, double
# backward, ...).

def _window_correlation_vjp(ops, grad, needs, keys, kernel_size, padding_mode):
    return (ops.window_correlation_backward(grad, keys, kernel_size, padding_mode),)


def _window_correlation_backward_vjp(ops, grad, needs, grad_logits, keys, kernel_size,
                                     padding_mode):
    # window_correlation_backward(g, q) = A(g) q + A(g)^T q, A(g) = adaptive_conv(., g)
    grad_grad_logits = grad_keys = None
    if needs[0]:
        grad_grad_logits = (
            ops.adaptive_conv_backward_kernel(grad, keys, kernel_size, padding_mode)
            + ops.adaptive_conv_backward_kernel(keys, grad, kernel_size, padding_mode))
    if needs[1]:
        grad_keys = ops.window_correlation_backward(grad_logits, grad, kernel_size,
                                                    padding_mode)
    return grad_grad_logits, grad_keys


def _adaptive_conv_vjp(ops, grad, needs, features, kernel, padding_mode):
    grad_features = grad_kernel = None
    if needs[0]:
        grad_features = ops.adaptive_conv_backward_features(grad, kernel, padding_mode)
    if needs[1]:
        grad_kernel = ops.adaptive_conv_backward_kernel(grad, features,
                                                        math.isqrt(kernel.shape[1]),
                                                        padding_mode)
    return grad_features, grad_kernel


def _adaptive_conv_backward_features_vjp(ops, grad, needs, grad_out, kernel, padding_mode):
    # A(kernel)^T grad_out: its adjoint in grad_out is A(kernel)
    grad_grad_out = grad_kernel = None
    if needs[0]:
        grad_grad_out = ops.adaptive_conv(grad, kernel, padding_mode)
    if needs[1]:
        grad_kernel = ops.adaptive_conv_backward_kernel(grad_out, grad,
                                                        math.isqrt(kernel.shape[1]),
                                                        padding_mode)
    return grad_grad_out, grad_kernel


def _adaptive_conv_backward_kernel_vjp(ops, grad, needs, grad_out, features, kernel_size,
                                       padding_mode):
    # <grad, corr(grad_out, features)> = <grad_out, A(grad) features>
    grad_grad_out = grad_features = None
    if needs[0]:
        grad_grad_out = ops.adaptive_conv(features, grad, padding_mode)
    if needs[1]:
        grad_features = ops.adaptive_conv_backward_features(grad_out, grad, padding_mode)
    return grad_grad_out, grad_features


def _neighbourhood_attention_scores_vjp(ops, grad, needs, queries, keys, kernel_size, dilation,
                                        border):
    grad_queries = grad_keys = None
    if needs[0]:
        grad_queries = ops.neighbourhood_attention_aggregate(grad, keys, dilation, border)
    if needs[1]:
        grad_keys = ops.neighbourhood_attention_transpose(grad, queries, list(keys.shape[-2:]),
                                                          dilation, border)
    return grad_queries, grad_keys


def _neighbourhood_attention_aggregate_vjp(ops, grad, needs, attn, values, dilation, border):
    grad_attn = grad_values = None
    if needs[0]:
        grad_attn = ops.neighbourhood_attention_scores(grad, values, math.isqrt(attn.shape[1]),
                                                       dilation, border)
    if needs[1]:
        grad_values = ops.neighbourhood_attention_transpose(attn, grad, list(values.shape[-2:]),
                                                            dilation, border)
    return grad_attn, grad_values


def _neighbourhood_attention_transpose_vjp(ops, grad, needs, attn, features, input_size,
                                           dilation, border):
    # <transpose(attn, features), grad> = <features, aggregate(attn, grad)>
    #                                   = <attn, scores(features, grad)>
    grad_attn = grad_features = None
    if needs[0]:
        grad_attn = ops.neighbourhood_attention_scores(features, grad, math.isqrt(attn.shape[1]),
                                                       dilation, border)
    if needs[1]:
        grad_features = ops.neighbourhood_attention_aggregate(attn, grad, dilation, border)
    return grad_attn, grad_features


def _bicubic_resize_vjp(ops, grad, needs, input_size):
    return (ops.bicubic_resize_backward(grad, input_size),)


def _bicubic_resize_backward_vjp(ops, grad, needs, input_size):
    # the adjoint of the adjoint: the resize, from the adjoint's output size to its input's
    return (ops.bicubic_resize(grad, input_size),)


def _normalized_range_kernel_vjp(ops, grad, needs, keys, range_param, sigma_spatial,
                                 kernel_size, variant, padding_mode):
    wanted = needs[:3]
    if torch.is_grad_enabled():
        # create_graph: the backward kernel has no derivative of its own, so the gradient is
        # that of the recomputed composition of the window ops, whose rules give any order
        inputs = [t for t, want in zip((keys, range_param, sigma_spatial), wanted) if want]
        out = normalized_range_kernel_reference(keys, range_param, sigma_spatial, kernel_size,
                                                variant, padding_mode,
                                                correlation=ops.window_correlation)
        grads = iter(torch.autograd.grad(out, inputs, grad, create_graph=True))
        return tuple(next(grads) if want else None for want in wanted)
    grads = torch.ops.featup_mmseg.normalized_range_kernel_backward(
        grad, keys, range_param, sigma_spatial, kernel_size, variant, padding_mode)
    return tuple(g if want else None for g, want in zip(grads, wanted))


def _save_inputs(ctx, inputs, num_tensors: int) -> None:
    """For the bilinear window ops: their tensor inputs, and the other arguments."""
    ctx.save_for_backward(*inputs[:num_tensors])
    ctx.params = inputs[num_tensors:]


def _save_input_size(ctx, inputs, num_tensors: int) -> None:
    """For the linear resize ops: only the input's spatial size (the input itself is not
    needed, so it is not kept alive)."""
    ctx.params = (list(inputs[0].shape[-2:]),)


# op name -> (number of leading tensor arguments, derivative rule, what the backward keeps)
_OPS = {
    'window_correlation': (1, _window_correlation_vjp, _save_inputs),
    'window_correlation_backward': (2, _window_correlation_backward_vjp, _save_inputs),
    'adaptive_conv': (2, _adaptive_conv_vjp, _save_inputs),
    'adaptive_conv_backward_features': (2, _adaptive_conv_backward_features_vjp, _save_inputs),
    'adaptive_conv_backward_kernel': (2, _adaptive_conv_backward_kernel_vjp, _save_inputs),
    'neighbourhood_attention_scores': (2, _neighbourhood_attention_scores_vjp, _save_inputs),
    'neighbourhood_attention_aggregate': (2, _neighbourhood_attention_aggregate_vjp,
                                          _save_inputs),
    'neighbourhood_attention_transpose': (2, _neighbourhood_attention_transpose_vjp,
                                          _save_inputs),
    'normalized_range_kernel': (3, _normalized_range_kernel_vjp, _save_inputs),
    'bicubic_resize': (1, _bicubic_resize_vjp, _save_input_size),
    'bicubic_resize_backward': (1, _bicubic_resize_backward_vjp, _save_input_size),
}


def _register_fake_kernels() -> None:
    """Shape-only kernels, so that tracing (torch.compile, torch.export) sees the ops."""
    register = getattr(torch.library, 'register_fake', None) or \
        getattr(torch.library, 'impl_abstract', None)
    if register is None:  # torch 2.1: fake tensors fall back to Meta kernels
        global _meta_library
        _meta_library = torch.library.Library('featup_mmseg', 'IMPL')

        def register(qualname, fake):
            _meta_library.impl(qualname[len(_LIBRARY):], fake, 'Meta')

    def keys_like(t, *_):
        return torch.empty_like(t, memory_format=torch.contiguous_format)

    def taps_like(t, kernel_size):
        batch, _, height, width = t.shape
        return t.new_empty((batch, kernel_size * kernel_size, height, width))

    fakes = {
        'window_correlation': lambda keys, kernel_size, mode: taps_like(keys, kernel_size),
        'window_correlation_backward': lambda grad, keys, kernel_size, mode: keys_like(keys),
        'adaptive_conv': lambda features, kernel, mode: keys_like(features),
        'adaptive_conv_backward_features': lambda grad, kernel, mode: keys_like(grad),
        'adaptive_conv_backward_kernel':
            lambda grad, features, kernel_size, mode: taps_like(features, kernel_size),
        'neighbourhood_attention_scores':
            lambda queries, keys, kernel_size, dilation, border: taps_like(queries, kernel_size),
        'neighbourhood_attention_aggregate':
            lambda attn, values, dilation, border: values.new_empty(
                (*values.shape[:2], *attn.shape[2:])),
        'neighbourhood_attention_transpose':
            lambda attn, features, input_size, dilation, border: features.new_empty(
                (*features.shape[:2], *input_size)),
        'normalized_range_kernel':
            lambda keys, param, sigma, kernel_size, variant, mode: taps_like(keys, kernel_size),
        'normalized_range_kernel_backward':
            lambda grad, keys, param, sigma, kernel_size, variant, mode:
                (keys_like(keys), param.new_empty(()), sigma.new_empty(())),
        'bicubic_resize': lambda x, size: x.new_empty((*x.shape[:2], *size)),
        # the ops writing into a given tensor return nothing
        'adaptive_conv_out': lambda features, kernel, mode, out: None,
        'adaptive_conv_backward_kernel_out':
            lambda grad, features, kernel_size, mode, out, accumulate: None,
        'bicubic_resize_backward':
            lambda grad, input_size: grad.new_empty((*grad.shape[:2], *input_size)),
        # the dropout ops (featup_mmseg/ops/dropout_ops.py)
        'bernoulli_out': lambda out, p: None,
        'masked_dot': lambda x, keep, weight: x.new_empty(x.shape[:2]),
        'masked_dot_backward': lambda grad, x, keep, weight, output_mask: (
            torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0]
            else None, torch.empty_like(weight) if output_mask[1] else None),
    }
    for name, fake in fakes.items():
        register(_LIBRARY + name, fake)


def _backward(ops, num_tensors: int, vjp):
    """The autograd backward of one op: its derivative rule over the ``ops`` namespace."""

    def backward(ctx, grad):
        grads = vjp(ops, grad, ctx.needs_input_grad, *ctx.saved_tensors, *ctx.params)
        return (*grads, *(None,) * (len(ctx.needs_input_grad) - num_tensors))

    return backward


def _register_dispatcher_autograd():
    """torch >= 2.4: autograd formulas registered with the dispatcher, so that torch.compile
    and torch.export trace the ops themselves."""
    ops = torch.ops.featup_mmseg
    for name, (num_tensors, vjp, save) in _OPS.items():
        torch.library.register_autograd(
            _LIBRARY + name, _backward(ops, num_tensors, vjp),
            setup_context=lambda ctx, inputs, output, n=num_tensors, save=save: save(ctx, inputs,
                                                                                    n))
    return ops


def _autograd_function_ops():
    """torch < 2.4 (or forced by FEATUP_MMSEG_LEGACY_OPS=1): the same kernels behind
    torch.autograd.Function, with the same derivative rules."""
    ops = types.SimpleNamespace()
    for name, (num_tensors, vjp, save) in _OPS.items():
        compiled = getattr(torch.ops.featup_mmseg, name)

        def forward(ctx, *inputs, compiled=compiled, num_tensors=num_tensors, save=save):
            save(ctx, inputs, num_tensors)
            return compiled(*inputs)

        function = type(name, (torch.autograd.Function,),
                        dict(forward=staticmethod(forward),
                             backward=staticmethod(_backward(ops, num_tensors, vjp))))

        # Without gradients, and under torch.jit.trace, the op is called directly, so that
        # traces (FLOP counters, the TorchScript ONNX exporter) see featup_mmseg::<op>
        # rather than an anonymous prim::PythonOp.
        def call(*inputs, compiled=compiled, function=function, num_tensors=num_tensors):
            if torch.is_grad_enabled() and not torch.jit.is_tracing() and \
                    any(t.requires_grad for t in inputs[:num_tensors]):
                return function.apply(*inputs)
            return compiled(*inputs)

        # TorchDynamo before torch 2.4 cannot trace these Functions: break the graph instead
        setattr(ops, name, torch.compiler.disable(call))
    return ops


def _registration() -> str:
    """'dispatcher', 'autograd_function', or 'reference' (no compiled extension)."""
    forced = os.environ.get(LEGACY_OPS_ENV, '0')
    if forced not in ('0', '1'):
        raise ValueError(f'{LEGACY_OPS_ENV} must be 0 or 1, got {forced!r}')
    if not _HAS_EXT:
        return 'reference'
    if forced == '1' or not hasattr(torch.library, 'register_autograd'):
        return 'autograd_function'
    return 'dispatcher'


_meta_library = None  # holds the torch 2.1 Meta registrations for the process's lifetime
REGISTRATION = _registration()
if REGISTRATION != 'reference':
    _register_fake_kernels()
_compiled_ops = {'dispatcher': _register_dispatcher_autograd,
                 'autograd_function': _autograd_function_ops,
                 'reference': lambda: None}[REGISTRATION]()
