"""The compiled bicubic resize and its adjoint against PyTorch's bicubic resize, on CPU and
CUDA, through both registration paths (CI reruns this file with FEATUP_MMSEG_LEGACY_OPS=1)."""
import pytest
import torch
import torch.nn.functional as F

from featup_mmseg.ops import (bicubic_resize, bicubic_resize_reference, bicubic_resize_transpose,
                              bicubic_resize_transpose_reference, ext_available,
                              use_reference_ops)
from featup_mmseg.ops import window_ops

CUDA = pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                      reason='no CUDA device'))
DEVICES = ['cpu', CUDA]
# (input size, output size): up- and downsampling, unequal factors, sizes of 1, identity
SIZES = [((9, 13), (20, 31)), ((7, 7), (5, 3)), ((17, 4), (4, 17)), ((1, 1), (3, 2)),
         ((14, 14), (28, 28)), ((6, 5), (6, 5)), ((3, 8), (64, 1)), ((32, 3), (5, 5))]


def _interpolate(x, size):
    return F.interpolate(x, size, mode='bicubic', align_corners=False)


def test_ops_are_compiled():
    assert ext_available('cpu')


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('sizes', SIZES, ids=str)
def test_matches_pytorch_and_its_gradient(device, sizes):
    source_size, size = sizes
    x = torch.randn(2, 3, *source_size, dtype=torch.float64, device=device, requires_grad=True)
    grad = torch.randn(2, 3, *size, dtype=torch.float64, device=device)
    want = _interpolate(x, size)
    want_grad, = torch.autograd.grad(want, x, grad)
    got = bicubic_resize(x, size)
    got_grad, = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bicubic_resize_transpose(grad, source_size), want_grad,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_lower_precisions(device, dtype):
    x = torch.randn(2, 5, 11, 9, device=device)
    grad = torch.randn(2, 5, 22, 17, device=device)
    want = _interpolate(x.double(), (22, 17))
    want_grad = bicubic_resize_transpose_reference(grad.double(), (11, 9))
    tolerance = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    got = bicubic_resize(x.to(dtype), (22, 17))
    got_grad = bicubic_resize_transpose(grad.to(dtype), (11, 9))
    assert got.dtype == got_grad.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=tolerance, atol=tolerance)


def test_gradients_of_every_order():
    x = torch.randn(2, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 2, 9, 4, dtype=torch.float64, requires_grad=True)
    for fn, t in [(lambda t: bicubic_resize(t, (9, 4)), x),
                  (lambda t: bicubic_resize_transpose(t, (5, 7)), y)]:
        assert torch.autograd.gradcheck(fn, (t,))
        assert torch.autograd.gradgradcheck(fn, (t,))


def test_transpose_is_the_adjoint_and_matches_reference():
    x = torch.randn(3, 2, 6, 10, dtype=torch.float64)
    y = torch.randn(3, 2, 13, 7, dtype=torch.float64)
    left = (bicubic_resize(x, (13, 7)) * y).sum()
    right = (x * bicubic_resize_transpose(y, (6, 10))).sum()
    torch.testing.assert_close(left, right, rtol=1e-12, atol=1e-12)
    with use_reference_ops():
        reference = bicubic_resize_transpose(y, (6, 10))
    torch.testing.assert_close(bicubic_resize_transpose(y, (6, 10)), reference,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('device', DEVICES)
def test_non_contiguous_input(device):
    x = torch.randn(2, 6, 8, 12, dtype=torch.float64, device=device)
    # planes strided themselves (copied first), and channel slices of a batch (read in place)
    for strided in (x.transpose(2, 3)[:, ::2], x[:, 1::2], x[:, 2:5], x[1:, 3:4]):
        torch.testing.assert_close(bicubic_resize(strided, (15, 9)),
                                   bicubic_resize_reference(strided, (15, 9)),
                                   rtol=1e-12, atol=1e-12)
        grad = torch.randn(*strided.shape[:2], 15, 9, dtype=torch.float64,
                           device=device).transpose(2, 3).contiguous().transpose(2, 3)
        torch.testing.assert_close(bicubic_resize_transpose(grad[:, :1], strided.shape[-2:]),
                                   bicubic_resize_transpose_reference(grad[:, :1],
                                                                      strided.shape[-2:]),
                                   rtol=1e-12, atol=1e-12)


def test_empty_batch_and_channels():
    for shape in [(0, 3, 4, 4), (2, 0, 4, 4)]:
        x = torch.randn(shape, requires_grad=True)
        out = bicubic_resize(x, (8, 6))
        assert out.shape == (*shape[:2], 8, 6)
        out.sum().backward()
        assert x.grad.shape == x.shape


@pytest.mark.skipif(window_ops.REGISTRATION != 'dispatcher',
                    reason='fullgraph tracing needs the dispatcher registration (torch >= 2.4)')
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64, requires_grad=True)

    def resize_twice(t):
        return bicubic_resize(bicubic_resize(t, (14, 10)).sin(), (9, 9))

    out = torch.compile(resize_twice, fullgraph=True)(x)
    expected = resize_twice(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0],
                               torch.autograd.grad(expected.sum(), x)[0])


@pytest.mark.parametrize('call, message', [
    (lambda: bicubic_resize(torch.randn(3, 4, 4), (8, 8)), r'x must be a 4-D \(B, C, H, W\)'),
    (lambda: bicubic_resize(torch.randn(1, 2, 4, 4).long(), (8, 8)), 'x must be float32'),
    (lambda: bicubic_resize(torch.randn(1, 2, 4, 4), (0, 8)), r'size must be two positive'),
    (lambda: bicubic_resize(torch.randn(1, 2, 4, 4), 8), r'size must be two positive'),
    (lambda: bicubic_resize(torch.randn(1, 2, 0, 4), (8, 8)), 'non-empty spatial size'),
    (lambda: bicubic_resize_transpose(torch.randn(1, 2, 4, 4), (2, 2, 2)),
     r'input_size must be two positive'),
])
def test_bad_input_is_rejected_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_dispatcher_ops_check_their_arguments():
    ops = torch.ops.featup_mmseg
    with pytest.raises(RuntimeError, match='size must be two positive sizes'):
        ops.bicubic_resize(torch.randn(1, 1, 4, 4), [0, 3])
    with pytest.raises(RuntimeError, match='grad must be a 4-D'):
        ops.bicubic_resize_backward(torch.randn(1, 4, 4), [2, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_matches_cpu_and_is_deterministic():
    x = torch.randn(2, 8, 33, 17, dtype=torch.float32)
    grad = torch.randn(2, 8, 66, 40, dtype=torch.float32)
    on_cpu = bicubic_resize(x, (66, 40)), bicubic_resize_transpose(grad, (33, 17))
    on_cuda = bicubic_resize(x.cuda(), (66, 40)), bicubic_resize_transpose(grad.cuda(), (33, 17))
    for a, b in zip(on_cuda, on_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)
    assert torch.equal(bicubic_resize_transpose(grad.cuda(), (33, 17)), on_cuda[1])
