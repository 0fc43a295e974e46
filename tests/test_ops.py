"""Compiled window ops against the spec's formulas (the unfold reference), on CPU and CUDA."""
import contextlib
import itertools
import os
import subprocess
import sys
import threading
import zlib

import pytest
import torch
import torch.nn.functional as F

from featup_mmseg.ops import (PADDING_MODES, adaptive_conv, adaptive_conv_reference,
                              adaptive_conv_transpose, adaptive_conv_transpose_reference,
                              ext_available, use_reference_ops, window_correlation,
                              window_correlation_reference, window_cross_correlation,
                              window_cross_correlation_reference)
from featup_mmseg.ops import window_ops

CUDA = pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                      reason='no CUDA device'))
DEVICES = ['cpu', CUDA]
HALF_TYPES = [torch.float16, torch.bfloat16]


def test_extension_is_built():
    # Every other test here would silently exercise the reference without it.
    assert ext_available()
    assert ext_available('cpu')


def test_registration_follows_capability_and_environment():
    # `make test` runs this file twice on every stack: once as torch allows, once with the
    # legacy path forced, so a path that silently stayed unused would fail here.
    if os.environ.get(window_ops.LEGACY_OPS_ENV) == '1' \
            or not hasattr(torch.library, 'register_autograd'):
        assert window_ops.REGISTRATION == 'autograd_function'
    else:
        assert window_ops.REGISTRATION == 'dispatcher'


def test_bad_legacy_ops_environment_is_rejected():
    env = {**os.environ, window_ops.LEGACY_OPS_ENV: 'yes'}
    result = subprocess.run([sys.executable, '-c', 'import featup_mmseg.ops'],
                            capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "FEATUP_MMSEG_LEGACY_OPS must be 0 or 1, got 'yes'" in result.stderr


# ----------------------------------------------------------------------------------------
# gradients: float64 gradcheck of every input, every padding mode

@pytest.mark.parametrize('kernel_size', [3, 5, 7])
@pytest.mark.parametrize('padding_mode', PADDING_MODES)
def test_window_correlation_gradcheck(kernel_size, padding_mode):
    keys = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q: window_correlation(q, kernel_size, padding_mode), (keys,))


@pytest.mark.parametrize('kernel_size', [3, 5, 7])
@pytest.mark.parametrize('padding_mode', PADDING_MODES)
def test_adaptive_conv_gradcheck(kernel_size, padding_mode):
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(2, kernel_size**2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: adaptive_conv(a, b, padding_mode), (x, kernel))


@pytest.mark.parametrize('padding_mode', PADDING_MODES)
def test_window_correlation_gradgradcheck(padding_mode):
    keys = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda q: window_correlation(q, 5, padding_mode),
                                        (keys,))


@pytest.mark.parametrize('padding_mode', PADDING_MODES)
def test_adaptive_conv_gradgradcheck(padding_mode):
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(2, 9, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: adaptive_conv(a, b, padding_mode),
                                        (x, kernel))


def test_third_derivatives_match_reference():
    # The derivative rules are written in terms of the ops themselves: any order works.
    def third(window_op, conv_op, q, x):
        out = conv_op(x, torch.softmax(window_op(q, 3, 'reflect'), 1), 'reflect')
        g, = torch.autograd.grad(out.square().sum(), q, create_graph=True)
        gg, = torch.autograd.grad(g.square().sum(), q, create_graph=True)
        return torch.autograd.grad(gg.sin().sum(), (q, x))

    q = torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    got = third(window_correlation, adaptive_conv, q, x)
    want = third(window_correlation_reference, adaptive_conv_reference, q, x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('kernel_size', [1, 3, 7])
@pytest.mark.parametrize('padding_mode', PADDING_MODES)
def test_adaptive_conv_transpose_is_the_adjoint(device, kernel_size, padding_mode):
    """<adaptive_conv(x, K), y> == <x, adaptive_conv_transpose(y, K)>, and it is the features
    gradient adaptive_conv's own backward computes; the reference agrees."""
    gen = torch.Generator().manual_seed(kernel_size)
    x, y = torch.randn(2, 2, 3, 8, 9, generator=gen, dtype=torch.float64).to(device).unbind(0)
    kernel = torch.randn(2, kernel_size**2, 8, 9, generator=gen, dtype=torch.float64).to(device)
    transposed = adaptive_conv_transpose(y, kernel, padding_mode)
    assert transposed.shape == x.shape and transposed.dtype == torch.float64
    torch.testing.assert_close((adaptive_conv(x, kernel, padding_mode) * y).sum(),
                               (x * transposed).sum(), rtol=1e-12, atol=1e-12)
    x.requires_grad_()
    grad_x, = torch.autograd.grad(adaptive_conv(x, kernel, padding_mode), x, y)
    torch.testing.assert_close(transposed, grad_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(adaptive_conv_transpose_reference(y, kernel, padding_mode),
                               transposed, rtol=0, atol=1e-12)


@pytest.mark.parametrize('padding_mode', PADDING_MODES)
def test_adaptive_conv_transpose_gradients_of_two_orders(padding_mode):
    y = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(1, 9, 5, 4, dtype=torch.float64, requires_grad=True)
    for op in (adaptive_conv_transpose, adaptive_conv_transpose_reference):
        assert torch.autograd.gradcheck(lambda a, b: op(a, b, padding_mode), (y, kernel))
        assert torch.autograd.gradgradcheck(lambda a, b: op(a, b, padding_mode), (y, kernel))


@pytest.mark.parametrize('dtype', HALF_TYPES)
def test_adaptive_conv_transpose_half_precision(dtype):
    y, kernel = torch.randn(2, 3, 6, 7), torch.rand(2, 9, 6, 7)
    expected = adaptive_conv_transpose(y, kernel, 'reflect')
    got = adaptive_conv_transpose(y.to(dtype), kernel.to(dtype), 'reflect')
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, rtol=0.02, atol=0.05)


def test_every_tap_receives_kernel_gradient():
    # FeatUp's CUDA kernel only ever updates taps 0, 1, 4, 9, 16, 25, 36 (spec section 1).
    x = torch.randn(1, 4, 12, 12, dtype=torch.float64)
    kernel = torch.randn(1, 49, 12, 12, dtype=torch.float64, requires_grad=True)
    adaptive_conv(x, kernel).square().sum().backward()
    assert (kernel.grad.abs().amax(dim=(0, 2, 3)) > 0).all()
    expected, = torch.autograd.grad(adaptive_conv_reference(x, kernel).square().sum(), kernel)
    torch.testing.assert_close(kernel.grad, expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------
# agreement with the reference on random shapes and dtypes

def _bilinear_outputs(op, inputs, grad_out):
    """op(*inputs) and its gradients for every input, given the output gradient."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = op(*inputs)
    grads = torch.autograd.grad(out, inputs, grad_out)
    return [out.detach(), *grads]


def _assert_matches_exact(op, reference, inputs, grad_out, terms):
    """Compares op in the inputs' dtype with the float64 reference on the same values.

    Both ops are bilinear, so |result| <= reference(|inputs|) elementwise for the output
    and every gradient. A sum of `terms` products accumulated in precision u stays within
    terms * u of that magnitude (the classic dot-product bound), and rounding the result to
    the inputs' dtype adds its own eps; the dtype's smallest normal covers results that
    underflow. Half types accumulate in float.
    """
    finfo = torch.finfo(inputs[0].dtype)
    accumulation_eps = torch.finfo(torch.promote_types(inputs[0].dtype, torch.float32)).eps
    got = _bilinear_outputs(op, inputs, grad_out)
    exact = _bilinear_outputs(reference, [t.double() for t in inputs], grad_out.double())
    bound = _bilinear_outputs(reference, [t.double().abs() for t in inputs],
                              grad_out.double().abs())
    for name, g, e, b in zip(['output', *[f'grad[{i}]' for i in range(len(inputs))]], got,
                             exact, bound):
        assert g.dtype == inputs[0].dtype and g.shape == e.shape, name
        err = (g.double() - e).abs()
        limit = (4 * finfo.eps + terms * accumulation_eps) * b + finfo.tiny
        assert (err <= limit).all(), f'{name}: max error {err.max():.3g}, ' \
            f'worst ratio {(err / limit).max():.3g}'


SHAPES = [  # (B, C, H, W, k)
    (2, 3, 9, 13, 3), (3, 16, 17, 10, 5), (2, 8, 24, 31, 7), (1, 5, 4, 4, 7),
    (2, 4, 11, 7, 9), (4, 1, 8, 8, 1),
    # the CPU kernels' 64-byte vectors of float (16) and double (8) with a tail, channel
    # blocks of 4 with a remainder, for each compiled window size
    (2, 6, 7, 37, 3), (1, 9, 6, 40, 5), (1, 7, 8, 35, 7),
    # the tiled CUDA kernels: 32 x 8 tiles, several per map in both directions with partial
    # ones; aggregation channel ranges of several channels; correlation partial sums over
    # channel ranges with a remainder
    (2, 40, 37, 70, 7), (1, 100, 9, 40, 5),
]


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, *HALF_TYPES])
@pytest.mark.parametrize('shape', SHAPES, ids=str)
@pytest.mark.parametrize('padding_mode', PADDING_MODES)
def test_matches_reference(device, dtype, shape, padding_mode):
    batch, channels, height, width, kernel_size = shape
    if padding_mode == 'reflect' and kernel_size // 2 >= min(height, width):
        pytest.skip('window too large for reflect padding')
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, padding_mode)).encode()))

    def rand(*size):
        return torch.randn(*size, generator=gen).to(device=device, dtype=dtype)

    # the longest sum: over channels, or over the taps landing on a pixel (borders fold
    # several taps onto one source)
    terms = channels + 2 * kernel_size**2
    keys = rand(batch, channels, height, width)
    _assert_matches_exact(lambda q: window_correlation(q, kernel_size, padding_mode),
                          lambda q: window_correlation_reference(q, kernel_size, padding_mode),
                          [keys], rand(batch, kernel_size**2, height, width), terms)
    features, kernel = rand(batch, channels, height, width), rand(batch, kernel_size**2,
                                                                  height, width)
    _assert_matches_exact(lambda x, k: adaptive_conv(x, k, padding_mode),
                          lambda x, k: adaptive_conv_reference(x, k, padding_mode),
                          [features, kernel], rand(batch, channels, height, width), terms)


@pytest.mark.parametrize('device', DEVICES)
def test_non_contiguous_inputs(device):
    base = torch.randn(2, 20, 12, 16, dtype=torch.float64, device=device)
    x = base[:, ::2].transpose(2, 3)  # strided channels, transposed plane
    kernel = torch.randn(2, 25, 16, 12, dtype=torch.float64, device=device)
    kernel = kernel.to(memory_format=torch.channels_last)
    assert not x.is_contiguous() and not kernel.is_contiguous()
    torch.testing.assert_close(adaptive_conv(x, kernel),
                               adaptive_conv_reference(x.contiguous(), kernel.contiguous()))
    torch.testing.assert_close(window_correlation(x, 5),
                               window_correlation_reference(x.contiguous(), 5))
    # gradients may arrive non-contiguous too
    grad = torch.randn(2, 16, 12, 25, dtype=torch.float64, device=device).permute(0, 3, 1, 2)
    q = x.detach().requires_grad_()
    got, = torch.autograd.grad(window_correlation(q, 5), q, grad)
    want, = torch.autograd.grad(window_correlation_reference(q, 5), q, grad)
    torch.testing.assert_close(got, want)


EMPTY_SHAPES = [(0, 3, 8, 8), (1, 0, 8, 8), (1, 2, 8, 0), (1, 2, 0, 8), (2, 3, 0, 0)]


@pytest.mark.parametrize('shape', EMPTY_SHAPES, ids=str)
@pytest.mark.parametrize('padding_mode', ['zeros', 'replicate'])
@pytest.mark.parametrize('implementation', ['public', 'dispatcher'])
def test_empty_maps(shape, padding_mode, implementation):
    # Zero-sized maps once read out of bounds in the border mapping (SIGSEGV).
    batch, channels, height, width = shape
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(batch, 9, height, width, dtype=torch.float64, requires_grad=True)
    if implementation == 'public':
        logits = window_correlation(x, 3, padding_mode)
        out = adaptive_conv(x, kernel, padding_mode)
    else:
        logits = torch.ops.featup_mmseg.window_correlation(x, 3, padding_mode)
        out = torch.ops.featup_mmseg.adaptive_conv(x, kernel, padding_mode)
    # no channels to sum over: zero logits; no pixels or channels: an empty output
    torch.testing.assert_close(logits, x.new_zeros(batch, 9, height, width))
    assert out.shape == shape
    if implementation == 'public':
        torch.testing.assert_close(logits, window_correlation_reference(x, 3, padding_mode))
        grads = torch.autograd.grad(out.sum() + logits.sum(), (x, kernel), allow_unused=True)
        assert grads[0] is not None and grads[0].shape == x.shape
        assert grads[1] is not None and (grads[1] == 0).all()
    for name, args in [('window_correlation_backward', (torch.zeros(batch, 9, height, width,
                                                                    dtype=torch.float64),
                                                        x.detach(), 3, padding_mode)),
                       ('adaptive_conv_backward_features', (x.detach(), kernel.detach(),
                                                            padding_mode)),
                       ('adaptive_conv_backward_kernel', (x.detach(), x.detach(), 3,
                                                          padding_mode))]:
        result = getattr(torch.ops.featup_mmseg, name)(*args)
        assert (result == 0).all() and result.dim() == 4, name


def test_reflect_padding_of_an_empty_map_is_rejected():
    with pytest.raises(ValueError, match=r'reflect padding needs .*\(8, 0\)'):
        adaptive_conv(torch.randn(1, 2, 8, 0), torch.randn(1, 9, 8, 0))
    with pytest.raises(RuntimeError, match=r'reflect padding needs kernel_size // 2 < H'):
        torch.ops.featup_mmseg.window_correlation(torch.randn(1, 2, 0, 8), 1, 'reflect')


# ----------------------------------------------------------------------------------------
# FeatUp's layout: pre-padded input, (B, H, W, k, k) kernel

def _featup_adaptive_conv_loop(x_padded, kernel):
    """FeatUp's AdaptiveConv definition, written as a plain loop over the taps."""
    _, height, width, k, _ = kernel.shape
    out = 0
    for i, j in itertools.product(range(k), range(k)):
        out = out + kernel[:, None, :, :, i, j] * x_padded[:, :, i:i + height, j:j + width]
    return out


@pytest.mark.parametrize('device', DEVICES)
def test_featup_layout(device):
    batch, channels, height, width, k = 2, 6, 10, 13, 7
    x = torch.randn(batch, channels, height, width, dtype=torch.float64, device=device)
    kernel = torch.randn(batch, k * k, height, width, dtype=torch.float64, device=device)
    x_padded = F.pad(x, [k // 2] * 4, mode='reflect').requires_grad_()
    kernel_featup = kernel.permute(0, 2, 3, 1).reshape(batch, height, width, k, k)
    kernel_featup.requires_grad_()

    out = adaptive_conv(x_padded, kernel_featup)
    torch.testing.assert_close(out, adaptive_conv(x, kernel, 'reflect'), rtol=1e-12, atol=1e-12)
    expected = _featup_adaptive_conv_loop(x_padded, kernel_featup)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x_padded, kernel_featup), grad)
    want = torch.autograd.grad(expected, (x_padded, kernel_featup), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------
# tracing: torch.compile and torch.export

def _jbu_like(q, x, temperature):
    logits = window_correlation(q, 5)
    kernel = torch.softmax(logits * temperature, dim=1)
    return adaptive_conv(x, kernel)


DISPATCHER_ONLY = pytest.mark.skipif(
    window_ops.REGISTRATION != 'dispatcher',
    reason='behind torch.autograd.Function, TorchDynamo breaks the graph at the ops')


@pytest.mark.parametrize('fullgraph', [pytest.param(True, marks=DISPATCHER_ONLY), False])
def test_torch_compile(fullgraph):
    torch._dynamo.reset()
    q = torch.randn(2, 8, 12, 10, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 4, 12, 10, dtype=torch.float64, requires_grad=True)
    temperature = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(_jbu_like, fullgraph=fullgraph)
    out = compiled(q, x, temperature)
    expected = _jbu_like(q, x, temperature)
    torch.testing.assert_close(out, expected)
    got = torch.autograd.grad(out.square().sum(), (q, x, temperature))
    want = torch.autograd.grad(expected.square().sum(), (q, x, temperature))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@DISPATCHER_ONLY
def test_torch_export():

    class Module(torch.nn.Module):

        def forward(self, q, x):
            return _jbu_like(q, x, 2.0)

    q, x = torch.randn(1, 8, 9, 9), torch.randn(1, 3, 9, 9)
    exported = torch.export.export(Module(), (q, x))
    targets = {str(node.target) for node in exported.graph.nodes}
    assert 'featup_mmseg.window_correlation.default' in targets
    assert 'featup_mmseg.adaptive_conv.default' in targets
    torch.testing.assert_close(exported.module()(q, x), Module()(q, x))


# ----------------------------------------------------------------------------------------
# bad input

BAD_INPUTS = [
    (lambda: window_correlation(torch.randn(3, 8, 8)), ValueError, r'q must be a 4-D'),
    (lambda: window_correlation(torch.randn(1, 2, 8, 8), 4), ValueError,
     r'kernel_size must be a positive odd int, got 4'),
    (lambda: window_correlation(torch.randn(1, 2, 3, 8), 7), ValueError,
     r'reflect padding needs kernel_size // 2 < H and < W.*\(3, 8\)'),
    (lambda: window_correlation(torch.randn(1, 2, 8, 8), 3, 'circular'), ValueError,
     r"padding_mode must be one of .*'circular'"),
    (lambda: window_correlation(torch.randint(0, 5, (1, 2, 8, 8))), ValueError,
     r'q must be float32, float64, float16 or bfloat16, got torch.int64'),
    (lambda: adaptive_conv(torch.randn(2, 3, 8, 8), torch.randn(2, 48, 8, 8)), ValueError,
     r'kernel must have k\*k channels for an odd k .*got 48'),
    (lambda: adaptive_conv(torch.randn(2, 3, 8, 8), torch.randn(2, 16, 8, 8)), ValueError,
     r'kernel must have k\*k channels for an odd k .*got 16'),
    (lambda: adaptive_conv(torch.randn(2, 3, 8, 8), torch.randn(1, 9, 8, 8)), ValueError,
     r'kernel must have shape \(B, k\*k, H, W\) = \(2, k\*k, 8, 8\).*got \(1, 9, 8, 8\)'),
    (lambda: adaptive_conv(torch.randn(2, 3, 8, 8), torch.randn(2, 9, 8, 7)), ValueError,
     r'kernel must have shape \(B, k\*k, H, W\) = \(2, k\*k, 8, 8\).*got \(2, 9, 8, 7\)'),
    (lambda: adaptive_conv(torch.randn(2, 3, 8, 8), torch.randn(2, 9, 8, 8).double()),
     ValueError, r'kernel has dtype torch.float64 but x has torch.float32'),
    (lambda: adaptive_conv(torch.randn(2, 3, 8, 8), torch.randn(2, 9, 8, 8, device='meta')),
     ValueError, r'kernel is on meta but x is on cpu'),
    (lambda: adaptive_conv(torch.randn(2, 3, 2, 8), torch.randn(2, 49, 2, 8)), ValueError,
     r'reflect padding needs kernel_size // 2 < H'),
    (lambda: adaptive_conv(torch.randn(2, 3, 8, 8), torch.randn(2, 8, 8, 7, 7)), ValueError,
     r'x must be padded by k // 2 on each side.*\(2, 3, 14, 14\)'),
    (lambda: adaptive_conv(torch.randn(2, 3, 8, 8), torch.randn(2, 8, 8, 3, 5)), ValueError,
     r'a 5-D kernel must be \(B, H, W, k, k\) with odd k'),
    (lambda: adaptive_conv([1.0], torch.randn(2, 9, 8, 8)), TypeError,
     r'x must be a torch.Tensor, got list'),
    (lambda: window_correlation(torch.randn(1, 2, 8, 8).to_sparse()), ValueError,
     r'q must be a dense \(strided\) tensor, got torch.sparse_coo'),
    (lambda: adaptive_conv(torch.randn(1, 2, 8, 8), torch.randn(1, 8, 8, 3, 3, 1)), ValueError,
     r"kernel must be a 4-D \(B, k\*k, H, W\) \(or FeatUp's 5-D \(B, H, W, k, k\)\) tensor"),
    (lambda: adaptive_conv_transpose(torch.randn(2, 3, 8, 8), torch.randn(2, 9, 8, 7)),
     ValueError, r'adaptive_conv_transpose: kernel must have shape \(B, k\*k, H, W\) = '
     r'\(2, k\*k, 8, 8\) to match y of shape \(2, 3, 8, 8\), got \(2, 9, 8, 7\)'),
    (lambda: adaptive_conv_transpose(torch.randn(2, 3, 8), torch.randn(2, 9, 8, 8)),
     ValueError, r'adaptive_conv_transpose: y must be a 4-D \(B, C, H, W\) tensor'),
    (lambda: adaptive_conv_transpose(torch.randn(1, 3, 8, 8), torch.randn(1, 9, 8, 8).half()),
     ValueError, r'kernel has dtype torch.float16 but y has torch.float32'),
    (lambda: adaptive_conv_transpose(torch.randn(1, 3, 8, 8), torch.randn(1, 9, 8, 8), 'wrap'),
     ValueError, r"adaptive_conv_transpose: padding_mode must be one of .*'wrap'"),
    # FeatUp's layout is pre-padded: a padding mode, valid or not, would be ignored
    (lambda: adaptive_conv(torch.randn(2, 3, 14, 14), torch.randn(2, 8, 8, 7, 7), 'zeros'),
     ValueError, r"padding_mode does not apply to FeatUp's layout .*got 'zeros'"),
    (lambda: adaptive_conv(torch.randn(2, 3, 14, 14), torch.randn(2, 8, 8, 7, 7), 'bogus'),
     ValueError, r"padding_mode does not apply to FeatUp's layout .*got 'bogus'"),
]


@pytest.mark.parametrize('call, error, message', BAD_INPUTS)
def test_bad_input_is_rejected_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_dispatcher_ops_check_their_arguments():
    # Direct torch.ops calls bypass the Python checks; the C++ checks still name the problem.
    with pytest.raises(RuntimeError, match=r'kernel must have k\*k channels'):
        torch.ops.featup_mmseg.adaptive_conv(torch.randn(1, 2, 8, 8), torch.randn(1, 8, 8, 8),
                                             'reflect')
    with pytest.raises(RuntimeError, match=r'reflect padding needs kernel_size // 2 < H'):
        torch.ops.featup_mmseg.window_correlation(torch.randn(1, 2, 2, 8), 7, 'reflect')
    with pytest.raises(RuntimeError, match=r'grad must have 9 channels'):
        torch.ops.featup_mmseg.window_correlation_backward(
            torch.randn(1, 8, 8, 8), torch.randn(1, 2, 8, 8), 3, 'zeros')


# ----------------------------------------------------------------------------------------
# out=: writing into a given tensor, and adding to it

@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize('kernel_size', [3, 7, 9])  # 9: the CPU's tap-by-tap loops
@pytest.mark.parametrize('implementation', ['compiled', 'reference'])
def test_out_writes_in_place_and_accumulates(device, dtype, kernel_size, implementation):
    gen = torch.Generator().manual_seed(kernel_size)

    def rand(*size):
        return torch.randn(*size, generator=gen).to(device=device, dtype=dtype)

    x, grad = rand(2, 5, 9, 21), rand(2, 5, 9, 21)
    kernel = rand(2, kernel_size**2, 9, 21)
    tolerance = {torch.float64: {}, torch.float32: dict(rtol=1e-5, atol=1e-5),
                 torch.bfloat16: dict(rtol=0.02, atol=0.1)}[dtype]
    context = use_reference_ops() if implementation == 'reference' else contextlib.nullcontext()
    with context:
        # a chunk of channels of one batch element of a larger result
        result = torch.full((2, 8, 9, 21), 7.0, device=device, dtype=dtype)
        chunk = result[1:, 2:7]
        assert adaptive_conv(x[1:], kernel[1:], 'zeros', out=chunk) is chunk
        torch.testing.assert_close(chunk, adaptive_conv(x[1:], kernel[1:], 'zeros'), rtol=0,
                                   atol=0)
        assert (result[:, :2] == 7).all() and (result[:, 7:] == 7).all() and (result[0] == 7).all()

        correlation = window_cross_correlation(grad, x, kernel_size, 'reflect')
        out = torch.empty_like(correlation)
        window_cross_correlation(grad, x, kernel_size, 'reflect', out=out)
        torch.testing.assert_close(out, correlation, rtol=0, atol=0)
        window_cross_correlation(grad[:, :2], x[:, :2], kernel_size, 'reflect', out=out,
                                 accumulate=True)
        want = correlation.double() + window_cross_correlation_reference(
            grad[:, :2].double(), x[:, :2].double(), kernel_size, 'reflect')
        torch.testing.assert_close(out.double(), want, **tolerance)


def test_bad_out_is_rejected_clearly():
    x, kernel = torch.randn(1, 2, 8, 8), torch.randn(1, 9, 8, 8)
    for out, message in [(torch.empty(1, 3, 8, 8), r'out must be a contiguous tensor of shape '
                          r'\(1, 2, 8, 8\), got shape \(1, 3, 8, 8\)'),
                         (torch.empty(1, 8, 8, 2).permute(0, 3, 1, 2), r'\(not contiguous\)'),
                         (torch.empty(1, 2, 8, 8, dtype=torch.float64),
                          r'out must be a torch.float32 tensor on cpu, got torch.float64')]:
        with pytest.raises(ValueError, match=message):
            adaptive_conv(x, kernel, 'zeros', out=out)
    with pytest.raises(ValueError, match=r'out= does not support autograd'):
        adaptive_conv(x.requires_grad_(), kernel, 'zeros', out=torch.empty(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r'accumulate=True needs out'):
        window_cross_correlation(x, x, 3, 'zeros', accumulate=True)
    with pytest.raises(TypeError, match=r'accumulate must be a bool, got str'):
        window_cross_correlation(x, x, 3, 'zeros', out=torch.empty(1, 9, 8, 8), accumulate='no')
    with pytest.raises(TypeError, match=r'out must be a torch.Tensor, got list'):
        window_cross_correlation(x, x, 3, 'zeros', out=[])
    # the C++ entry checks too (direct torch.ops calls)
    with pytest.raises(RuntimeError, match=r'out must have shape \[1, 9, 8, 8\]'):
        torch.ops.featup_mmseg.adaptive_conv_backward_kernel_out(
            x.detach(), x.detach(), 3, 'zeros', torch.empty(1, 2, 8, 8), False)


# ----------------------------------------------------------------------------------------
# fallback when the extension is absent

FALLBACK_SCRIPT = r'''
import sys, warnings
sys.modules['featup_mmseg._ext'] = None  # makes `from featup_mmseg import _ext` fail
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    from featup_mmseg import ops
    x, k, grad = torch.load(sys.argv[1])
    x.requires_grad_()
    out = ops.adaptive_conv(x, k)
    logits = ops.window_correlation(x, 5)
    grad_x, = torch.autograd.grad((out * grad).sum() + logits.sum(), x)
messages = [str(w.message) for w in caught if 'featup_mmseg._ext' in str(w.message)]
assert len(messages) == 1, messages
assert 'pure-PyTorch reference' in messages[0]
assert not ops.ext_available() and not ops.ext_available('cpu')
assert ops.window_ops.REGISTRATION == 'reference'
torch.save((out.detach(), logits.detach(), grad_x), sys.argv[2])
print('fallback ok')
'''


def test_fallback_without_extension(tmp_path):
    # The fallback's results are compared with the compiled kernels' in this process.
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    k = torch.softmax(torch.randn(2, 25, 9, 8, dtype=torch.float64), 1)
    grad = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    torch.save((x.detach(), k, grad), tmp_path / 'inputs.pt')
    result = subprocess.run([sys.executable, '-c', FALLBACK_SCRIPT, str(tmp_path / 'inputs.pt'),
                             str(tmp_path / 'outputs.pt')], capture_output=True, text=True,
                            env={**os.environ, 'PYTHONWARNINGS': 'default'})
    assert result.returncode == 0, result.stderr
    assert 'fallback ok' in result.stdout
    out, logits = adaptive_conv(x, k), window_correlation(x, 5)
    grad_x, = torch.autograd.grad((out * grad).sum() + logits.sum(), x)
    for got, want in zip(torch.load(tmp_path / 'outputs.pt'), (out, logits, grad_x)):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------
# CUDA against CPU (runs only where a GPU is present)

@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('padding_mode', PADDING_MODES)
def test_cuda_gradcheck_and_matches_cpu(padding_mode):
    assert ext_available('cuda')
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, device='cuda', requires_grad=True)
    kernel = torch.randn(2, 25, 7, 9, dtype=torch.float64, device='cuda', requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: adaptive_conv(a, b, padding_mode), (x, kernel))
    assert torch.autograd.gradcheck(lambda q: window_correlation(q, 5, padding_mode), (x,))
    cases = [(lambda a, b: adaptive_conv(a, b, padding_mode), [x, kernel]),
             (lambda q: window_correlation(q, 5, padding_mode), [x])]
    for op, inputs in cases:
        grad_out = torch.randn_like(op(*inputs))
        on_cuda = _bilinear_outputs(op, inputs, grad_out)
        on_cpu = _bilinear_outputs(op, [t.cpu() for t in inputs], grad_out.cpu())
        for a, b in zip(on_cuda, on_cpu):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_results_are_deterministic():
    # Tiled kernels sum channel ranges in a fixed order, never with atomics.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 100, 37, 70, generator=gen).cuda()
    kernel = torch.randn(2, 49, 37, 70, generator=gen).cuda()
    cases = [(lambda a, b: adaptive_conv(a, b), [x, kernel]),
             (lambda q: window_correlation(q, 7), [x[:, :64]])]
    for op, inputs in cases:
        grad_out = torch.randn_like(op(*inputs))
        first, again = (_bilinear_outputs(op, inputs, grad_out) for _ in range(2))
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_use_reference_ops_switches_implementation(monkeypatch):
    calls = []
    real_unfold = F.unfold
    monkeypatch.setattr(F, 'unfold', lambda *a, **k: calls.append(1) or real_unfold(*a, **k))
    x, kernel = torch.randn(1, 2, 6, 6), torch.randn(1, 9, 6, 6)
    compiled = adaptive_conv(x, kernel)
    assert not calls
    with use_reference_ops():
        reference = adaptive_conv(x, kernel)
    assert calls
    torch.testing.assert_close(compiled, reference)
    calls.clear()
    adaptive_conv(x, kernel)
    assert not calls


def test_use_reference_ops_reaches_autograd_threads(monkeypatch):
    # CUDA backward passes (and the recomputation of checkpointed code in them) run in
    # autograd's own threads: the switch must hold there too, as in any other thread.
    calls = []
    real_unfold = F.unfold
    monkeypatch.setattr(F, 'unfold', lambda *a, **k: calls.append(1) or real_unfold(*a, **k))
    x, kernel = torch.randn(1, 2, 6, 6), torch.randn(1, 9, 6, 6)
    with use_reference_ops():
        thread = threading.Thread(target=adaptive_conv, args=(x, kernel))
        thread.start()
        thread.join()
    assert calls
    calls.clear()
    thread = threading.Thread(target=adaptive_conv, args=(x, kernel))
    thread.start()
    thread.join()
    assert not calls
