"""The fused range kernel, normalized_range_kernel: its compiled CPU kernels against the
composition of window ops it replaces (the reference, and a JBU stage's own range and
spatial kernels), gradients of every order, both registration paths (CI reruns this file
with FEATUP_MMSEG_LEGACY_OPS=1), torch.compile and bad arguments."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from featup_mmseg.layers import JBUStage
from featup_mmseg.ops import (PADDING_MODES, RANGE_VARIANTS, normalized_range_kernel,
                              normalized_range_kernel_reference, use_reference_ops)
from featup_mmseg.ops import window_ops

RANGE_KERNELS = ('softmax', 'no_mlp', 'gaussian_euclidean', 'gaussian_cosine')
VARIANT = {'softmax': 'softmax', 'no_mlp': 'softmax', 'gaussian_euclidean': 'gaussian_euclidean',
           'gaussian_cosine': 'gaussian_cosine'}


def _inputs(variant, shape=(2, 3, 4, 5), seed=0, dtype=torch.float64):
    """keys (unit length for 'gaussian_cosine'), range_param and sigma_spatial, all leaves."""
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(shape, generator=gen, dtype=dtype)
    if variant == 'gaussian_cosine':
        keys = F.normalize(keys, dim=1)
    range_param = torch.tensor(0.4 if variant == 'softmax' else 0.9, dtype=dtype)
    sigma_spatial = torch.tensor(0.8, dtype=dtype)
    return [t.requires_grad_() for t in (keys, range_param, sigma_spatial)]


def _value_and_grads(op, keys, range_param, sigma_spatial, *args):
    out = op(keys, range_param, sigma_spatial, *args)
    weights = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)
    return (out, *torch.autograd.grad((out * weights).sum(),
                                      (keys, range_param, sigma_spatial)))


def _assert_all_close(got, want, tol):
    # relative too: with the tap sum clamped, gradients reach 1e7
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


def test_cpu_runs_the_compiled_kernel():
    # Every other test here would silently compare the composition with itself without it.
    assert 'cpu' in window_ops._RANGE_KERNEL_DEVICES


@pytest.mark.parametrize('range_kernel', RANGE_KERNELS)
@pytest.mark.parametrize('radius, size', [(1, (2, 3)), (3, (4, 5))])  # barely > radius
def test_matches_the_jbu_stage_composition(range_kernel, radius, size):
    torch.manual_seed(radius)
    stage = JBUStage(3, key_dim=4, radius=radius, range_kernel=range_kernel).double().eval()
    with torch.no_grad():
        stage.sigma_spatial.fill_(0.8)
        if range_kernel in ('softmax', 'no_mlp'):
            stage.range_temp.fill_(0.6)
        else:
            stage.sigma_range.fill_(0.9)
    guidance = torch.randn(2, 3, *size, dtype=torch.float64)
    combined = stage.range_kernel(guidance) * stage.spatial_kernel()
    expected = combined / combined.sum(1, keepdim=True).clamp(min=1e-7)

    keys = guidance if range_kernel == 'no_mlp' else stage.range_proj(guidance)
    if range_kernel == 'gaussian_cosine':
        keys = F.normalize(keys, dim=1)
    param = stage.range_temp if range_kernel in ('softmax', 'no_mlp') else stage.sigma_range
    args = (keys, param, stage.sigma_spatial, stage.kernel_size, VARIANT[range_kernel])
    got = normalized_range_kernel(*args)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(normalized_range_kernel_reference(*args), expected, rtol=0,
                               atol=1e-12)


class _OpNames(TorchDispatchMode):
    """The names of the ops dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('range_kernel', RANGE_KERNELS)
def test_jbu_stage_kernel_runs_the_fused_op(range_kernel):
    stage = JBUStage(3, key_dim=4, radius=1, range_kernel=range_kernel).train()
    guidance = torch.randn(1, 3, 3, 3, requires_grad=True)
    with _OpNames() as forward:
        kernel = stage.kernel(guidance)
    with _OpNames() as backward:
        kernel.sum().backward()
    assert 'featup_mmseg.normalized_range_kernel' in forward.names
    assert 'featup_mmseg.window_correlation' not in forward.names
    assert 'featup_mmseg.normalized_range_kernel_backward' in backward.names
    # the temperature and the spatial Gaussian come from the parameters inside the op: no
    # scalar ops of their own either way
    scalar_ops = {'aten.exp', 'aten.clamp', 'aten.linspace'}
    assert not scalar_ops & (forward.names | backward.names)


@pytest.mark.parametrize('variant', RANGE_VARIANTS)
@pytest.mark.parametrize('padding_mode', PADDING_MODES)
def test_gradients_match_the_reference(variant, padding_mode):
    inputs = _inputs(variant, shape=(2, 3, 3, 4))
    args = (5, variant, padding_mode)
    _assert_all_close(_value_and_grads(normalized_range_kernel, *inputs, *args),
                      _value_and_grads(normalized_range_kernel_reference, *inputs, *args), 1e-12)


@pytest.mark.parametrize('range_temp', [9.0, 10.0])  # temperature 8103, and clamped at 1e4
def test_clamped_tap_sum_and_temperature(range_temp):
    # A narrow spatial kernel leaves the centre tap only, and a sharp softmax puts its weight
    # on neighbours: tap sums fall below 1e-7 and are clamped there, K no longer sums to 1
    # and its gradient no longer flows through the sum. Beyond exp(range_temp) = 1e4 the
    # temperature's gradient is 0.
    keys = _inputs('softmax')[0]
    params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (range_temp, 0.05)]
    got = _value_and_grads(normalized_range_kernel, keys, *params, 3, 'softmax')
    assert got[0].sum(1).min() < 0.5
    assert (got[2] == 0) == (range_temp == 10.0)
    _assert_all_close(
        got, _value_and_grads(normalized_range_kernel_reference, keys, *params, 3, 'softmax'),
        1e-12)


def test_float32_and_the_composition_fallback_agree():
    inputs = _inputs('gaussian_euclidean', shape=(1, 4, 6, 7), dtype=torch.float32)
    got = _value_and_grads(normalized_range_kernel, *inputs, 7, 'gaussian_euclidean')
    with use_reference_ops():
        want = _value_and_grads(normalized_range_kernel, *inputs, 7, 'gaussian_euclidean')
    _assert_all_close(got, want, 1e-4)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('variant', RANGE_VARIANTS)
def test_half_precision_keys_are_compared_in_float32(dtype, variant):
    # float32 parameters with half keys, as under autocast: K and the keys' gradient in the
    # keys' dtype, computed in float32 from them; each parameter's gradient in its own dtype
    keys, range_param, sigma_spatial = _inputs(variant, dtype=torch.float32)
    half_keys = keys.detach().to(dtype).requires_grad_()
    float_keys = half_keys.detach().float().requires_grad_()
    params = (range_param, sigma_spatial)
    out = normalized_range_kernel(half_keys, *params, 3, variant)
    want = normalized_range_kernel(float_keys, *params, 3, variant)
    assert out.dtype == dtype
    assert torch.equal(out, want.to(dtype))
    grad = torch.randn(want.shape).to(dtype)
    got = torch.autograd.grad(out, (half_keys, *params), grad)
    expected = torch.autograd.grad(want, (float_keys, *params), grad.float())
    assert [t.dtype for t in got] == [dtype, torch.float32, torch.float32]
    assert torch.equal(got[0], expected[0].to(dtype))
    _assert_all_close(got[1:], expected[1:], 1e-6)
    with use_reference_ops():  # the composition computes in float32 alike
        torch.testing.assert_close(normalized_range_kernel(half_keys, *params, 3, variant), out)


@pytest.mark.parametrize('shape', [(0, 2, 4, 4), (1, 0, 4, 4)])
def test_empty_batch_and_keys_without_channels(shape):
    inputs = _inputs('softmax', shape=shape)
    _assert_all_close(_value_and_grads(normalized_range_kernel, *inputs, 3, 'softmax'),
                      _value_and_grads(normalized_range_kernel_reference, *inputs, 3, 'softmax'),
                      1e-12)


@pytest.mark.parametrize('variant', RANGE_VARIANTS)
def test_gradcheck_and_gradgradcheck(variant):
    inputs = _inputs(variant, shape=(1, 2, 3, 3))
    op = lambda *t: normalized_range_kernel(*t, 3, variant)  # noqa: E731
    assert torch.autograd.gradcheck(op, inputs)
    assert torch.autograd.gradgradcheck(op, inputs)


def test_legacy_registration_path():
    # The torch.autograd.Function wrappers of torch < 2.4, built here beside the registered ops.
    legacy = window_ops._autograd_function_ops()
    inputs = _inputs('softmax', shape=(1, 2, 3, 3))
    op = lambda *t: legacy.normalized_range_kernel(*t, 3, 'softmax', 'reflect')  # noqa: E731
    assert torch.autograd.gradcheck(op, inputs)
    assert torch.autograd.gradgradcheck(op, inputs)
    _assert_all_close(_value_and_grads(op, *inputs),
                      _value_and_grads(normalized_range_kernel, *inputs, 3, 'softmax'), 1e-12)


@pytest.mark.skipif(window_ops.REGISTRATION != 'dispatcher',
                    reason='behind torch.autograd.Function, TorchDynamo breaks the graph')
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    inputs = _inputs('gaussian_euclidean')
    op = lambda *t: normalized_range_kernel(*t, 3, 'gaussian_euclidean')  # noqa: E731
    compiled = torch.compile(op, fullgraph=True, backend='aot_eager')
    _assert_all_close(_value_and_grads(compiled, *inputs), _value_and_grads(op, *inputs), 1e-12)


def _call(keys=None, range_param=None, sigma_spatial=None, kernel_size=3, variant='softmax',
          padding_mode='reflect'):
    keys = torch.randn(1, 2, 4, 4) if keys is None else keys
    range_param = torch.tensor(1.0) if range_param is None else range_param
    sigma_spatial = torch.tensor(1.0) if sigma_spatial is None else sigma_spatial
    return lambda: normalized_range_kernel(keys, range_param, sigma_spatial, kernel_size,
                                           variant, padding_mode)


BAD_ARGUMENTS = [
    (_call(keys=torch.randn(2, 4, 4)), ValueError, r'keys must be a 4-D'),
    (_call(variant='gaussian'), ValueError, r"variant must be one of .*got 'gaussian'"),
    (_call(kernel_size=4), ValueError, r'kernel_size must be a positive odd int, got 4'),
    (_call(keys=torch.randn(1, 2, 1, 4)), ValueError,
     r'reflect padding needs kernel_size // 2 < H and < W'),
    (_call(padding_mode='circular'), ValueError, r"padding_mode must be one of .*'circular'"),
    (_call(range_param=1.0), TypeError, r'range_param must be a torch.Tensor, got float'),
    (_call(range_param=torch.ones(1)), ValueError,
     r'range_param must be a 0-dim floating tensor, got shape \(1,\)'),
    (_call(range_param=torch.tensor(1)), ValueError,
     r'range_param must be a 0-dim floating tensor, got shape \(\) and dtype torch.int64'),
    (_call(sigma_spatial=torch.ones(9)), ValueError,
     r'sigma_spatial must be a 0-dim floating tensor, got shape \(9,\)'),
    (_call(sigma_spatial=torch.tensor(1.0, device='meta')), ValueError,
     r'sigma_spatial is on meta but keys is on cpu'),
]


@pytest.mark.parametrize('call, error, message', BAD_ARGUMENTS)
def test_bad_arguments_are_rejected_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_dispatcher_ops_check_their_arguments():
    # Direct torch.ops calls bypass the Python checks; the C++ checks still name the problem.
    ops = torch.ops.featup_mmseg
    keys, param = torch.randn(1, 2, 4, 4), torch.tensor(1.0)
    with pytest.raises(RuntimeError, match=r'sigma_spatial must be a 0-dim floating tensor'):
        ops.normalized_range_kernel(keys, param, torch.ones(9), 3, 'softmax', 'reflect')
    with pytest.raises(RuntimeError, match=r"variant must be 'softmax', .*got 'cosine'"):
        ops.normalized_range_kernel(keys, param, param, 3, 'cosine', 'reflect')
    with pytest.raises(RuntimeError, match=r'grad must have shape \(1, 9, 4, 4\)'):
        ops.normalized_range_kernel_backward(torch.randn(1, 8, 4, 4), keys, param, param, 3,
                                             'softmax', 'reflect')
