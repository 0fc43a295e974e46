"""The CUDA kernels' per-element math, compiled for the host and checked against autograd
of the reference ops, so that it is tested on machines without a GPU as well."""
import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from featup_mmseg.ops import (PADDING_MODES, adaptive_conv_reference,
                              neighbourhood_attention_aggregate_reference,
                              neighbourhood_attention_scores_reference,
                              neighbourhood_attention_transpose_reference,
                              window_correlation_reference)

ROOT = Path(__file__).resolve().parents[1]
MODES = {'zeros': 0, 'reflect': 1, 'replicate': 2}  # featup_mmseg::PaddingMode


@pytest.fixture(scope='module')
def host_kernels(tmp_path_factory):
    compiler = shutil.which('c++') or shutil.which('g++')
    if compiler is None:
        pytest.skip('no C++ compiler')
    library = tmp_path_factory.mktemp('host_kernels') / 'window_elements_host.so'
    subprocess.run([
        compiler, '-O1', '-shared', '-fPIC', '-std=c++17', f'-I{ROOT / "csrc"}',
        str(ROOT / 'tests' / 'csrc' / 'window_elements_host.cpp'),
        str(ROOT / 'tests' / 'csrc' / 'bicubic_elements_host.cpp'),
        str(ROOT / 'tests' / 'csrc' / 'neighbourhood_elements_host.cpp'), '-o', str(library)
    ], check=True)
    return ctypes.CDLL(str(library))


def _run(host_kernels, name, lhs, rhs, out_shape, kernel_size, padding_mode):
    lhs, rhs = lhs.contiguous(), rhs.contiguous()
    out = torch.empty(out_shape, dtype=torch.float64)
    pointer = ctypes.c_void_p
    getattr(host_kernels, name)(
        pointer(lhs.data_ptr()), pointer(rhs.data_ptr()), pointer(out.data_ptr()),
        ctypes.c_int64(out.numel()), ctypes.c_int64(rhs.shape[1]), ctypes.c_int64(rhs.shape[2]),
        ctypes.c_int64(rhs.shape[3]), ctypes.c_int64(kernel_size // 2),
        ctypes.c_int(MODES[padding_mode]))
    return out


@pytest.mark.parametrize('padding_mode', PADDING_MODES)
@pytest.mark.parametrize('shape', [(2, 3, 9, 13, 3), (1, 2, 5, 6, 7), (2, 2, 4, 4, 7),
                                   (1, 1, 1, 3, 5), (2, 3, 11, 8, 5)], ids=str)
def test_device_element_math_matches_reference(host_kernels, padding_mode, shape):
    batch, channels, height, width, k = shape
    if padding_mode == 'reflect' and k // 2 >= min(height, width):
        pytest.skip('window too large for reflect padding')
    x = torch.randn(batch, channels, height, width, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(batch, k * k, height, width, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(batch, channels, height, width, dtype=torch.float64)
    grad_logits = torch.randn(batch, k * k, height, width, dtype=torch.float64)

    out = adaptive_conv_reference(x, kernel, padding_mode)
    grad_x, grad_kernel = torch.autograd.grad(out, (x, kernel), grad_out)
    logits = window_correlation_reference(x, k, padding_mode)
    grad_keys, = torch.autograd.grad(logits, x, grad_logits)

    x, kernel = x.detach(), kernel.detach()
    checks = {
        'window_aggregate': (kernel, x, out),
        'window_aggregate_adjoint': (kernel, grad_out, grad_x),
        'window_correlate': (grad_out, x, grad_kernel),
        'window_correlation_backward': (grad_logits, x, grad_keys),
    }
    for name, (lhs, rhs, expected) in checks.items():
        got = _run(host_kernels, name, lhs, rhs, expected.shape, k, padding_mode)
        torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=1e-12, msg=name)
    got = _run(host_kernels, 'window_correlate', x, x, logits.shape, k, padding_mode)
    torch.testing.assert_close(got, logits.detach(), rtol=1e-12, atol=1e-12)

    # The tiled CUDA kernels compute the adjoint and the correlation gradient as zero-padded
    # aggregations with a rewritten kernel.
    rewritten = {
        'adjoint': (kernel, False, True, grad_out, grad_x),
        'correlation gradient': (grad_logits, True, True, x, grad_keys),
        'aggregation': (kernel, True, False, x, out),
    }
    for name, (lhs, forward, adjoint, values, expected) in rewritten.items():
        zero_padded = _zero_padded_kernel(host_kernels, lhs, k, padding_mode, forward, adjoint)
        got = _run(host_kernels, 'window_aggregate', zero_padded, values, expected.shape, k,
                   'zeros')
        torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=1e-12, msg=name)


def _zero_padded_kernel(host_kernels, kernel, kernel_size, padding_mode, forward, adjoint):
    kernel = kernel.contiguous()
    out = torch.empty_like(kernel)
    host_kernels.window_zero_padded_kernel(
        ctypes.c_void_p(kernel.data_ptr()), ctypes.c_void_p(out.data_ptr()),
        ctypes.c_int64(out.shape[0]), ctypes.c_int64(kernel.shape[2]),
        ctypes.c_int64(kernel.shape[3]), ctypes.c_int64(kernel_size // 2),
        ctypes.c_int(MODES[padding_mode]), ctypes.c_bool(forward), ctypes.c_bool(adjoint))
    return out


@pytest.mark.parametrize('sizes', [((9, 13), (20, 31)), ((7, 7), (5, 3)), ((1, 1), (3, 2)),
                                   ((14, 14), (224, 224)), ((32, 3), (5, 5))], ids=str)
def test_bicubic_resize_element_math_matches_pytorch(host_kernels, sizes):
    (in_height, in_width), (out_height, out_width) = sizes
    x = torch.randn(2, 3, in_height, in_width, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, out_height, out_width, dtype=torch.float64)
    out = torch.nn.functional.interpolate(x, (out_height, out_width), mode='bicubic',
                                          align_corners=False)
    grad_x, = torch.autograd.grad(out, x, grad)
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for name, source, expected in [('bicubic_resize', x.detach(), out.detach()),
                                   ('bicubic_resize_adjoint', grad, grad_x)]:
        got = torch.empty_like(expected)
        getattr(host_kernels, name)(pointer(source.data_ptr()), pointer(got.data_ptr()),
                                    size(got.numel()), size(in_height), size(in_width),
                                    size(out_height), size(out_width))
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize('border, low, high, kernel_size, dilation', [
    ('shift', (4, 5), (7, 11), 3, 1), ('shift', (7, 6), (10, 13), 3, 2),
    ('clamp', (2, 5), (5, 3), 3, 2), ('clamp', (3, 4), (9, 8), 2, 1)], ids=str)
def test_neighbourhood_element_math_matches_reference(host_kernels, border, low, high,
                                                      kernel_size, dilation):
    batch, channels = 2, 3
    queries = torch.randn(batch, channels, *high, dtype=torch.float64)
    keys = torch.randn(batch, channels, *low, dtype=torch.float64)
    attn = torch.randn(batch, kernel_size**2, *high, dtype=torch.float64)
    checks = {
        'neighbourhood_scores': (queries, keys, neighbourhood_attention_scores_reference(
            queries, keys, kernel_size, dilation, border)),
        'neighbourhood_aggregate': (attn, keys, neighbourhood_attention_aggregate_reference(
            attn, keys, dilation, border)),
        'neighbourhood_transpose': (attn, queries, neighbourhood_attention_transpose_reference(
            attn, queries, low, dilation, border)),
    }
    size = ctypes.c_int64
    for name, (lhs, rhs, expected) in checks.items():
        got = torch.empty_like(expected)
        getattr(host_kernels, name)(
            ctypes.c_void_p(lhs.data_ptr()), ctypes.c_void_p(rhs.data_ptr()),
            ctypes.c_void_p(got.data_ptr()), size(got.numel()), size(channels), size(high[0]),
            size(high[1]), size(low[0]), size(low[1]), size(kernel_size), size(dilation),
            ctypes.c_int({'shift': 0, 'clamp': 1}[border]))
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=name)
