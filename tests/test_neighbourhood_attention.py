"""Cross-scale neighbourhood attention ops: the compiled CPU kernels against the gather
reference, and both against the windows written out from their definitions: NATTEN's
neighbourhood on keys and values nearest-upsampled to the queries' size (dense masked
attention) and the windows of a replicate-padded low-res map, upsampled."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from featup_mmseg.ops import (ext_available, neighbourhood_attention_aggregate,
                              neighbourhood_attention_aggregate_reference,
                              neighbourhood_attention_scores,
                              neighbourhood_attention_scores_reference,
                              neighbourhood_attention_transpose,
                              neighbourhood_attention_transpose_reference, use_reference_ops)
from featup_mmseg.ops import window_ops

F64 = dict(dtype=torch.float64)
EXACT = dict(rtol=1e-12, atol=1e-12)


def test_extension_has_the_ops():
    # every comparison below would otherwise compare the reference with itself
    assert ext_available('cpu')
    assert hasattr(torch.ops.featup_mmseg, 'neighbourhood_attention_transpose')


def _inputs(batch, channels, low, high, kernel_size, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(batch, channels, *high, generator=generator, **kwargs)
    keys = torch.randn(batch, channels, *low, generator=generator, **kwargs)
    values = torch.randn(batch, channels + 1, *low, generator=generator, **kwargs)
    attn = torch.randn(batch, kernel_size**2, *high, generator=generator, **kwargs)
    return queries, keys, values, attn


# ----------------------------------------------------------------------------------------
# the windows written out from their definitions

def _natten_neighbours(index, length, kernel_size, dilation):
    """NATTEN's neighbourhood of ``index``: k positions of its residue class modulo the
    dilation, centred on it, moved to lie inside [0, length)."""
    members = list(range(index % dilation, length, dilation))
    position = members.index(index)
    start = min(max(position - kernel_size // 2, 0), len(members) - kernel_size)
    return members[start:start + kernel_size]


def _dense_natten_attention(queries, keys, values, kernel_size, dilation):
    """Softmax attention of every query over NATTEN's neighbourhood of keys and values
    nearest-upsampled to the queries' size, with NATTEN's dilation times the (integer)
    upsampling ratio: a (H*W) x (H*W) mask over the upsampled map."""
    height, width = queries.shape[-2:]
    ratio_y, ratio_x = height // keys.shape[2], width // keys.shape[3]
    keys_up = F.interpolate(keys, (height, width), mode='nearest-exact')
    values_up = F.interpolate(values, (height, width), mode='nearest-exact')
    mask = torch.zeros(height, width, height, width, dtype=torch.bool)
    for y in range(height):
        rows = torch.tensor(_natten_neighbours(y, height, kernel_size, ratio_y * dilation))
        for x in range(width):
            cols = torch.tensor(_natten_neighbours(x, width, kernel_size, ratio_x * dilation))
            mask[y, x, rows.unsqueeze(1), cols] = True
    logits = torch.einsum('ndyx,ndYX->nyxYX', queries, keys_up)
    logits = logits.masked_fill(~mask, float('-inf')).flatten(3)
    weights = logits.softmax(-1).view(*logits.shape[:3], height, width)
    return torch.einsum('nyxYX,ncYX->ncyx', weights, values_up)


def _op_attention(queries, keys, values, kernel_size, dilation, border):
    scores = neighbourhood_attention_scores(queries, keys, kernel_size, dilation, border)
    return neighbourhood_attention_aggregate(scores.softmax(1), values, dilation, border)


# (low-res size, high-res size, kernel_size, dilation): integer ratios, non-square, maps
# the window barely fits, dilation > 1
NATTEN_CASES = [((4, 5), (8, 15), 3, 1), ((3, 4), (6, 4), 3, 1), ((6, 6), (12, 6), 3, 2),
                ((5, 3), (10, 9), 3, 1)]


@pytest.mark.parametrize('low, high, kernel_size, dilation', NATTEN_CASES, ids=str)
def test_shift_is_natten_on_upsampled_maps(low, high, kernel_size, dilation):
    queries, keys, values, _ = _inputs(2, 3, low, high, kernel_size, **F64)
    inputs = [t.requires_grad_() for t in (queries, keys, values)]
    out = _op_attention(*inputs, kernel_size, dilation, 'shift')
    expected = _dense_natten_attention(*inputs, kernel_size, dilation)
    torch.testing.assert_close(out, expected, **EXACT)
    grad_out = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, inputs, grad_out),
                         torch.autograd.grad(expected, inputs, grad_out)):
        torch.testing.assert_close(got, want, **EXACT)


def test_masked_clamp_is_anyup_window_attention():
    """AnyUp's windowed attention: each query attends to the low-res cells whose rows
    (columns) overlap [p - ratio, p + ratio] * h, p its pixel centre in [0, 1], cut at the
    borders. For ratio * h = k // 2, border 'clamp' with its border-repeating taps masked."""
    low, high, kernel_size = (5, 5), (7, 12), 3
    ratio = (kernel_size // 2) / low[0]
    queries, keys, values, _ = _inputs(2, 3, low, high, kernel_size, **F64)

    def overlapping(size, input_size):  # (size, input_size): the cells each query keeps
        centres = (torch.arange(size, **F64) + 0.5) / size
        first = ((centres - ratio).clamp(0, 1) * input_size).floor()
        end = ((centres + ratio).clamp(0, 1) * input_size).ceil()
        cells = torch.arange(input_size, **F64)
        return (cells >= first.unsqueeze(1)) & (cells < end.unsqueeze(1))

    keep = overlapping(high[0], low[0])[:, None, :, None] & \
        overlapping(high[1], low[1])[None, :, None, :]  # (H, W, h, w)
    logits = torch.einsum('ndyx,ndij->nyxij', queries, keys).masked_fill(~keep, float('-inf'))
    weights = logits.flatten(3).softmax(-1).view_as(logits)
    expected = torch.einsum('nyxij,ncij->ncyx', weights, values)

    def inside(size, input_size):  # (size, k): whether a tap's unclamped index is in the map
        cells = _nearest_exact_cells(size, input_size).unsqueeze(1)
        unclamped = cells + torch.arange(kernel_size) - kernel_size // 2
        return (unclamped >= 0) & (unclamped < input_size)

    taps_inside = (inside(high[0], low[0])[:, :, None, None] &
                   inside(high[1], low[1]).T[None, None, :, :])  # (H, k_y, k_x, W)
    taps_inside = taps_inside.permute(1, 2, 0, 3).reshape(kernel_size**2, *high)
    scores = neighbourhood_attention_scores(queries, keys, kernel_size, 1, 'clamp')
    attn = scores.masked_fill(~taps_inside, float('-inf')).softmax(1)
    out = neighbourhood_attention_aggregate(attn, values, 1, 'clamp')
    torch.testing.assert_close(out, expected, **EXACT)


def _nearest_exact_cells(size, input_size):
    """(size,) the low-res cell F.interpolate's 'nearest-exact' gives each query index."""
    return F.interpolate(torch.arange(input_size, **F64).view(1, 1, input_size, 1),
                         (size, 1), mode='nearest-exact').view(-1).long()


def _shift_rows(size, input_size, kernel_size, dilation):
    """(size, k) low-res rows of border 'shift': NATTEN's neighbourhood of each query's
    nearest-exact cell on the low-res map."""
    return torch.tensor([_natten_neighbours(int(c), input_size, kernel_size, dilation)
                         for c in _nearest_exact_cells(size, input_size)])


def _defined_windows(x, size, kernel_size, dilation, border):
    """(N, C, k*k, H, W) windows of low-res x seen by the queries of an (H, W) map."""
    batch, channels, height, width = x.shape
    if border == 'clamp':  # odd k: the window centred on the cell, in a replicate-padded map
        pad = kernel_size // 2 * dilation
        windows = F.unfold(F.pad(x, [pad] * 4, mode='replicate'), kernel_size,
                           dilation=dilation).view(batch, -1, height, width)
        return F.interpolate(windows, size, mode='nearest-exact').view(
            batch, channels, kernel_size**2, *size)
    rows = _shift_rows(size[0], height, kernel_size, dilation)
    cols = _shift_rows(size[1], width, kernel_size, dilation)
    return x[:, :, rows][..., cols].permute(0, 1, 3, 5, 2, 4).reshape(
        batch, channels, kernel_size**2, *size)


# non-integer ratios, a window as large as the map, corners of single-cell maps (clamp),
# dilation > 1, batch * heads > 1, non-square
DEFINITION_CASES = [
    ('shift', (4, 5), (7, 11), 3, 1), ('shift', (3, 3), (5, 4), 3, 1),
    ('shift', (7, 6), (10, 13), 3, 2), ('shift', (5, 6), (9, 8), 1, 1),
    ('clamp', (4, 5), (7, 11), 3, 1), ('clamp', (1, 2), (3, 5), 3, 1),
    ('clamp', (5, 4), (11, 6), 3, 2), ('clamp', (3, 6), (4, 13), 5, 1),
]


@pytest.mark.parametrize('border, low, high, kernel_size, dilation', DEFINITION_CASES, ids=str)
def test_matches_window_definition(border, low, high, kernel_size, dilation):
    queries, keys, values, attn = _inputs(3, 2, low, high, kernel_size, **F64)
    args = (dilation, border)
    scores = neighbourhood_attention_scores(queries, keys, kernel_size, *args)
    out = neighbourhood_attention_aggregate(attn, values, *args)
    features = torch.randn(3, 4, *high, **F64)
    scattered = neighbourhood_attention_transpose(attn, features, low, *args)
    windows_k = _defined_windows(keys, high, kernel_size, dilation, border)
    windows_v = _defined_windows(values, high, kernel_size, dilation, border)
    torch.testing.assert_close(scores, (windows_k * queries.unsqueeze(2)).sum(1), **EXACT)
    torch.testing.assert_close(out, (windows_v * attn.unsqueeze(1)).sum(2), **EXACT)
    # the transpose is the adjoint: <aggregate(attn, v), f> = <v, transpose(attn, f)>
    v = torch.randn(3, 4, *low, **F64)
    torch.testing.assert_close((neighbourhood_attention_aggregate(attn, v, *args) * features).sum(),
                               (v * scattered).sum(), **EXACT)
    # the reference, called directly and as the public ops' fallback
    references = (neighbourhood_attention_scores_reference(queries, keys, kernel_size, *args),
                  neighbourhood_attention_aggregate_reference(attn, values, *args),
                  neighbourhood_attention_transpose_reference(attn, features, low, *args))
    with use_reference_ops():
        fallbacks = (neighbourhood_attention_scores(queries, keys, kernel_size, *args),
                     neighbourhood_attention_aggregate(attn, values, *args),
                     neighbourhood_attention_transpose(attn, features, low, *args))
    for compiled, reference, fallback in zip((scores, out, scattered), references, fallbacks):
        torch.testing.assert_close(compiled, reference, **EXACT)
        torch.testing.assert_close(fallback, reference, **EXACT)


def test_even_kernel_and_no_channels_match_reference():
    queries, keys, values, attn = _inputs(2, 3, (4, 3), (6, 7), 2, **F64)
    for border in ('shift', 'clamp'):
        torch.testing.assert_close(
            neighbourhood_attention_scores(queries, keys, 2, 1, border),
            neighbourhood_attention_scores_reference(queries, keys, 2, 1, border), **EXACT)
        torch.testing.assert_close(
            neighbourhood_attention_transpose(attn, queries, (4, 3), 1, border),
            neighbourhood_attention_transpose_reference(attn, queries, (4, 3), 1, border),
            **EXACT)
    no_channels = neighbourhood_attention_scores(queries[:, :0], keys[:, :0], 2)
    assert no_channels.shape == (2, 4, 6, 7) and not no_channels.any()


# ----------------------------------------------------------------------------------------
# gradients of any order: each op's derivatives are the other two

def _three_ops(border, dilation):
    return {
        'scores': lambda a, b: neighbourhood_attention_scores(a, b, 3, dilation, border),
        'aggregate': lambda a, b: neighbourhood_attention_aggregate(a, b, dilation, border),
        'transpose': lambda a, b: neighbourhood_attention_transpose(a, b, (3, 4), dilation,
                                                                    border),
    }


def _gradient_inputs(name):
    queries, keys, values, attn = _inputs(1, 2, (3, 4), (4, 5), 3, **F64)
    pair = {'scores': (queries, keys), 'aggregate': (attn, values),
            'transpose': (attn, queries)}[name]
    return tuple(t.requires_grad_() for t in pair)


@pytest.mark.parametrize('name', ['scores', 'aggregate', 'transpose'])
@pytest.mark.parametrize('border, dilation', [('shift', 1), ('clamp', 2)])
def test_gradcheck_and_gradgradcheck(name, border, dilation):
    op = _three_ops(border, dilation)[name]
    inputs = _gradient_inputs(name)
    assert torch.autograd.gradcheck(op, inputs)
    assert torch.autograd.gradgradcheck(op, inputs)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_matches_float64(dtype):
    queries, keys, values, attn = _inputs(2, 8, (4, 5), (7, 9), 3, **F64)
    ops = _three_ops('shift', 1)
    for name, args in (('scores', (queries, keys[..., :3, :4])), ('aggregate', (attn, values)),
                       ('transpose', (attn, queries))):
        got = ops[name](*(t.to(dtype) for t in args))
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), ops[name](*args), rtol=0.05, atol=0.1)


# ----------------------------------------------------------------------------------------
# registration paths and tracing

LEGACY_SCRIPT = r'''
import torch
from featup_mmseg.ops import (neighbourhood_attention_aggregate,
                              neighbourhood_attention_aggregate_reference,
                              neighbourhood_attention_scores, neighbourhood_attention_transpose)
from featup_mmseg.ops import window_ops
assert window_ops.REGISTRATION == 'autograd_function', window_ops.REGISTRATION
double = dict(dtype=torch.float64, requires_grad=True)
queries, keys = torch.randn(1, 2, 5, 4, **double), torch.randn(1, 2, 3, 3, **double)
attn, values = torch.randn(1, 9, 5, 4, **double), torch.randn(1, 3, 3, 2, **double)
scores = lambda q, k: neighbourhood_attention_scores(q, k, 3, 1, 'shift')
aggregate = lambda a, v: neighbourhood_attention_aggregate(a, v, 1, 'clamp')
transpose = lambda a, f: neighbourhood_attention_transpose(a, f, (3, 3), 1, 'shift')
torch.testing.assert_close(aggregate(attn, values),
                           neighbourhood_attention_aggregate_reference(attn, values, 1, 'clamp'))
for op, inputs in ((scores, (queries, keys)), (aggregate, (attn, values)),
                   (transpose, (attn, queries))):
    assert torch.autograd.gradgradcheck(op, inputs)
print('legacy ok')
'''


def test_behind_autograd_function():
    """The other registration (torch < 2.4 or FEATUP_MMSEG_LEGACY_OPS=1), in a subprocess."""
    env = {**os.environ, window_ops.LEGACY_OPS_ENV: '1'}
    result = subprocess.run([sys.executable, '-c', LEGACY_SCRIPT], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert 'legacy ok' in result.stdout


@pytest.mark.skipif(window_ops.REGISTRATION != 'dispatcher',
                    reason='behind torch.autograd.Function, TorchDynamo breaks the graph')
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    queries, keys, values, _ = _inputs(2, 4, (3, 4), (6, 8), 3, **F64)
    inputs = [t.requires_grad_() for t in (queries, keys, values)]

    def attention(q, k, v):
        return _op_attention(q, k, v, 3, 1, 'shift')

    out = torch.compile(attention, fullgraph=True)(*inputs)
    expected = attention(*inputs)
    torch.testing.assert_close(out, expected)
    for got, want in zip(torch.autograd.grad(out.square().sum(), inputs),
                         torch.autograd.grad(expected.square().sum(), inputs)):
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------------------
# bad arguments

def _q(*shape, **kwargs):
    return torch.zeros(*shape, **kwargs)


BAD_INPUTS = [
    (lambda: neighbourhood_attention_scores(_q(1, 2, 4, 4), _q(2, 2, 2, 2), 1), ValueError,
     r'keys must have the batch size and channels \(N, D\) = \(1, 2\)'),
    (lambda: neighbourhood_attention_scores(_q(1, 2, 4, 4), _q(1, 3, 2, 2), 1), ValueError,
     r'keys must have the batch size and channels'),
    (lambda: neighbourhood_attention_scores(_q(1, 2, 4), _q(1, 2, 2, 2), 1), ValueError,
     r'queries must be a 4-D \(N, D, H, W\) tensor'),
    (lambda: neighbourhood_attention_scores(_q(1, 2, 4, 4), _q(1, 2, 2, 2, dtype=torch.float64),
                                            1), ValueError, 'keys has dtype torch.float64'),
    (lambda: neighbourhood_attention_scores(_q(1, 2, 4, 4, dtype=torch.int64),
                                            _q(1, 2, 2, 2), 1), ValueError,
     'queries must be float32, float64, float16 or bfloat16'),
    (lambda: neighbourhood_attention_scores(_q(1, 2, 4, 4), _q(1, 2, 2, 2), 0), ValueError,
     'kernel_size must be an int >= 1, got 0'),
    (lambda: neighbourhood_attention_scores(_q(1, 2, 4, 4), _q(1, 2, 2, 2), 1, 0), ValueError,
     'dilation must be an int >= 1, got 0'),
    (lambda: neighbourhood_attention_scores(_q(1, 2, 4, 4), _q(1, 2, 2, 2), 1, 1, 'wrap'),
     ValueError, r"border must be one of \('shift', 'clamp'\), got 'wrap'"),
    (lambda: neighbourhood_attention_scores(_q(1, 2, 8, 8), _q(1, 2, 2, 4), 3), ValueError,
     r"border 'shift' needs kernel_size \* dilation = 3 <= the low-res map's height and "
     r'width, got spatial size \(2, 4\)'),
    (lambda: neighbourhood_attention_scores(_q(1, 2, 8, 8), _q(1, 2, 0, 4), 1, 1, 'clamp'),
     ValueError, r'non-empty spatial size \(h, w\), got \(0, 4\)'),
    (lambda: neighbourhood_attention_aggregate(_q(1, 8, 4, 4), _q(1, 2, 2, 2)), ValueError,
     r'attn must have k\*k channels \(1, 4, 9, ...\), got shape \(1, 8, 4, 4\)'),
    (lambda: neighbourhood_attention_aggregate(_q(1, 4, 4, 4), _q(2, 2, 2, 2)), ValueError,
     r'values must have batch size N = 1 like attn'),
    (lambda: neighbourhood_attention_transpose(_q(1, 4, 4, 4), _q(1, 2, 4, 3), (2, 2)),
     ValueError, r'features must have the spatial size \(H, W\) = \(4, 4\) of attn'),
    (lambda: neighbourhood_attention_transpose(_q(1, 4, 4, 4), _q(1, 2, 4, 4), (2,)),
     ValueError, r'input_size must be two positive ints \(H, W\)'),
]


@pytest.mark.parametrize('call, error, message', BAD_INPUTS)
def test_bad_input_is_rejected_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_dispatcher_ops_check_their_arguments():
    ops = torch.ops.featup_mmseg
    with pytest.raises(RuntimeError, match="border must be 'shift' or 'clamp', got 'wrap'"):
        ops.neighbourhood_attention_scores(_q(1, 2, 4, 4), _q(1, 2, 2, 2), 1, 1, 'wrap')
    with pytest.raises(RuntimeError, match=r"border 'shift' needs kernel_size \* dilation"):
        ops.neighbourhood_attention_aggregate(_q(1, 9, 4, 4), _q(1, 2, 2, 2), 1, 'shift')
    with pytest.raises(RuntimeError, match='attn must have k\\*k channels, got 8'):
        ops.neighbourhood_attention_transpose(_q(1, 8, 4, 4), _q(1, 2, 4, 4), [2, 2], 1, 'clamp')
