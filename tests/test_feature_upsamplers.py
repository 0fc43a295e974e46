"""The feature upsamplers of FeatUp's Table 2 (and DySample) against independent unfold
formulations of their papers, their identities, sizes, dtypes, gradients and errors."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from featup_mmseg.layers.feature_upsamplers import (A2U, CARAFE, FADE, SAPA, DySample, IndexNet,
                                                    ResizeConv)
from featup_mmseg.ops import (PADDING_MODES, window_correlation, window_cross_correlation,
                              window_cross_correlation_reference)
from featup_mmseg.ops import window_ops

# name -> (class, options for 4-channel test maps)
METHODS = {
    'ResizeConv': (ResizeConv, {}),
    'CARAFE': (CARAFE, dict(compressed_channels=3)),
    'IndexNet': (IndexNet, {}),
    'IndexNet-m2o-linear': (IndexNet, dict(index_block='m2o', nonlinear=False, context=False)),
    'IndexNet-o2o': (IndexNet, dict(index_block='o2o')),
    'A2U': (A2U, dict(norm_groups=2)),
    'SAPA': (SAPA, dict(embedding_dim=3)),
    'FADE': (FADE, dict(compressed_channels=3)),
    'DySample': (DySample, dict(groups=2)),
}
# smaller windows where the defaults would make float64 gradchecks slow
GRADCHECK_OPTIONS = {
    'CARAFE': dict(compressed_channels=2, up_kernel=3, encoder_kernel=1),
    'A2U': dict(norm_groups=2, encoder_kernel=4),
    'SAPA': dict(embedding_dim=2, up_kernel=3),
    'FADE': dict(compressed_channels=2, up_kernel=3, encoder_kernel=1),
}
INTEGER_SCALE = [name for name in METHODS if name != 'ResizeConv']
CHANNELS = 4


def build(name, dtype=torch.float32, seed=0, **overrides):
    cls, options = METHODS[name]
    torch.manual_seed(seed)
    module = cls(CHANNELS, CHANNELS, **{**options, **overrides})
    return randomise(module, seed).to(dtype).eval()


def randomise(module, seed=0):
    """Non-default values for every parameter, so the content of each input matters (the
    initialisations of CARAFE and DySample make kernels uniform and offsets ~0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return module


def inputs(source_size=(5, 6), guidance_size=(10, 12), batch=2, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    source = torch.randn(batch, CHANNELS, *source_size, generator=gen).to(dtype)
    guidance = torch.randn(batch, CHANNELS, *guidance_size, generator=gen).to(dtype)
    return source, guidance


def zero_windows(x, kernel_size):
    """(B, C, k*k, h, w): every zero-padded k x k window of x, tap p = i*k + j."""
    batch, channels, height, width = x.shape
    cols = F.unfold(x, kernel_size, padding=kernel_size // 2)
    return cols.view(batch, channels, kernel_size * kernel_size, height, width)


def nearest_up(x, scale):
    return x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def reassemble_unfold(source, kernel, scale):
    """CARAFE's reassembly written out: out[Y, X] = sum_p kernel[p, Y, X] *
    source~[Y // s + i - r, X // s + j - r] (zero outside)."""
    kernel_size = int(kernel.shape[1]**0.5)
    windows = nearest_up(zero_windows(source, kernel_size), scale)
    return (windows * kernel.unsqueeze(1)).sum(2)


def channel_layer_norm(x, norm):
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], norm.weight,
                        norm.bias).permute(0, 3, 1, 2)


def conv(x, module, **kwargs):
    return F.conv2d(x, module.weight, module.bias, padding=module.weight.shape[-1] // 2,
                    **kwargs)


# ----------------------------------------------------------------------------------------
# the compiled window cross-correlation

@pytest.mark.parametrize('padding_mode', PADDING_MODES)
@pytest.mark.parametrize('kernel_size', [1, 3, 5])
def test_window_cross_correlation_matches_unfold(padding_mode, kernel_size):
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    keys = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    radius = kernel_size // 2
    mode = 'constant' if padding_mode == 'zeros' else padding_mode
    padded = F.pad(keys, [radius] * 4, mode=mode)
    windows = F.unfold(padded, kernel_size).view(2, 3, kernel_size**2, 6, 5)
    expected = (windows * queries.unsqueeze(2)).sum(1)
    got = window_cross_correlation(queries, keys, kernel_size, padding_mode)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        window_cross_correlation_reference(queries, keys, kernel_size, padding_mode), expected,
        rtol=0, atol=1e-12)
    torch.testing.assert_close(window_cross_correlation(keys, keys, kernel_size, padding_mode),
                               window_correlation(keys, kernel_size, padding_mode), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize('padding_mode', PADDING_MODES)
def test_window_cross_correlation_gradients_of_two_orders(padding_mode):
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)

    def correlate(q, k):
        return window_cross_correlation(q, k, 3, padding_mode)

    assert torch.autograd.gradcheck(correlate, (queries, keys))
    assert torch.autograd.gradgradcheck(correlate, (queries, keys))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_window_cross_correlation_half_precision(dtype):
    queries, keys = torch.randn(2, 1, 4, 6, 7).unbind(0)
    expected = window_cross_correlation(queries, keys, 3, 'zeros')
    got = window_cross_correlation(queries.to(dtype), keys.to(dtype), 3, 'zeros')
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, rtol=0.02, atol=0.05)


@pytest.mark.parametrize('call, message', [
    (lambda: window_cross_correlation(torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4), 3),
     r'window_cross_correlation: queries and keys must have the same shape .* got '
     r'\(1, 2, 4, 4\) and \(1, 3, 4, 4\)'),
    (lambda: window_cross_correlation(torch.randn(2, 4, 4), torch.randn(2, 4, 4), 3),
     r'window_cross_correlation: queries must be a 4-D'),
    (lambda: window_cross_correlation(torch.randn(1, 2, 4, 4),
                                      torch.randn(1, 2, 4, 4).double(), 3),
     r'keys has dtype torch.float64 but queries has torch.float32'),
    (lambda: window_cross_correlation(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4), 4),
     r'kernel_size must be a positive odd int, got 4'),
    (lambda: window_cross_correlation(torch.randn(1, 2, 2, 4), torch.randn(1, 2, 2, 4), 5),
     r'reflect padding needs kernel_size // 2 < H and < W'),
])
def test_window_cross_correlation_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


LEGACY_SCRIPT = r'''
import torch
from featup_mmseg.layers.feature_upsamplers import SAPA
from featup_mmseg.ops import window_cross_correlation, window_cross_correlation_reference
from featup_mmseg.ops import window_ops
assert window_ops.REGISTRATION == 'autograd_function', window_ops.REGISTRATION
q, k = torch.randn(2, 1, 2, 5, 4, dtype=torch.float64).unbind(0)
q.requires_grad_(True), k.requires_grad_(True)
f = lambda q, k: window_cross_correlation(q, k, 3, 'zeros')
torch.testing.assert_close(f(q, k), window_cross_correlation_reference(q, k, 3, 'zeros'))
assert torch.autograd.gradgradcheck(f, (q, k))
up = SAPA(2, 2, up_kernel=3).double()
source = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
guidance = torch.randn(1, 2, 4, 6, dtype=torch.float64, requires_grad=True)
assert torch.autograd.gradcheck(up, (source, guidance))
print('legacy ok')
'''


def test_window_cross_correlation_behind_autograd_function():
    """The other registration (torch < 2.4 or FEATUP_MMSEG_LEGACY_OPS=1) in a subprocess."""
    env = {**os.environ, window_ops.LEGACY_OPS_ENV: '1'}
    result = subprocess.run([sys.executable, '-c', LEGACY_SCRIPT], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert 'legacy ok' in result.stdout


# ----------------------------------------------------------------------------------------
# the methods against their papers, written with F.unfold

def test_carafe_matches_unfold_formulation():
    up = build('CARAFE', torch.float64)
    source, guidance = inputs(dtype=torch.float64)
    logits = conv(conv(source, up.channel_compressor), up.content_encoder)
    kernel = torch.softmax(F.pixel_shuffle(logits, 2), dim=1)  # (B, 25, 10, 12)
    expected = reassemble_unfold(source, kernel, 2)
    torch.testing.assert_close(up(source, guidance), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize('scale', [2, 3])
def test_sapa_matches_unfold_formulation(scale):
    up = build('SAPA', torch.float64, scale_factor=scale)
    source, guidance = inputs((4, 5), (4 * scale, 5 * scale), dtype=torch.float64)
    queries = conv(channel_layer_norm(guidance, up.norm_guidance.norm), up.query)
    keys = conv(channel_layer_norm(source, up.norm_source.norm), up.key)
    key_windows = nearest_up(zero_windows(keys, 5), scale)  # (B, D, 25, H, W)
    weights = torch.softmax((queries.unsqueeze(2) * key_windows).sum(1), dim=1)
    expected = reassemble_unfold(source, weights, scale)
    torch.testing.assert_close(up(source, guidance), expected, rtol=0, atol=1e-12)


def test_fade_matches_unfold_formulation():
    up = build('FADE', torch.float64)
    source, guidance = inputs(dtype=torch.float64)
    semi_shift = (conv(conv(guidance, up.guidance_compressor), up.content_encoder)
                  + nearest_up(conv(F.conv2d(source, up.source_compressor.weight),
                                    up.content_encoder), 2))
    reassembled = reassemble_unfold(source, torch.softmax(semi_shift, dim=1), 2)
    gate = torch.sigmoid(nearest_up(conv(source, up.gate), 2))
    expected = gate * guidance + (1 - gate) * reassembled
    torch.testing.assert_close(up(source, guidance), expected, rtol=0, atol=1e-12)


def test_a2u_matches_unfold_formulation():
    up = build('A2U', torch.float64)
    source, guidance = inputs(dtype=torch.float64)
    batch, channels = guidance.shape[:2]

    def encode(encoder, norm):  # per-sample depthwise conv, one kernel for all channels
        kernels = conv(F.adaptive_avg_pool2d(guidance, 6), encoder)
        encoded = torch.cat([
            F.conv2d(guidance[b:b + 1], kernels[b:b + 1].expand(channels, 1, 6, 6), stride=2,
                     padding=2, groups=channels) for b in range(batch)])
        return F.leaky_relu(F.group_norm(encoded, 2, norm.weight, norm.bias))

    affinity = (encode(up.encoder_u, up.norm_u) * encode(up.encoder_v, up.norm_v)).sum(
        1, keepdim=True) / channels**0.5
    weights = conv(guidance.mean((2, 3), keepdim=True), up.kernel_weights)
    kernel = torch.softmax(torch.sigmoid(F.pixel_shuffle(weights * affinity, 2)), dim=1)
    torch.testing.assert_close(up(source, guidance), reassemble_unfold(source, kernel, 2),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize('name', ['IndexNet', 'IndexNet-m2o-linear', 'IndexNet-o2o'])
def test_indexnet_matches_its_index_blocks(name):
    up = build(name, torch.float64)
    source, guidance = inputs(dtype=torch.float64)
    if up.index_block == 'holistic':
        logits = up.index_net(guidance)  # (B, 4, h, w): sub-pixel a*2 + b
        index = F.pixel_shuffle(torch.sigmoid(logits), 2)
        assert index.shape == (2, 1, 10, 12)
    else:
        branches = [branch(guidance) for branch in up.index_net]  # branch a*2 + b
        index = torch.zeros(2, CHANNELS, 10, 12, dtype=torch.float64)
        for phase, logits in enumerate(branches):
            index[:, :, phase // 2::2, phase % 2::2] = torch.sigmoid(logits)
    torch.testing.assert_close(up(source, guidance), index * nearest_up(source, 2), rtol=0,
                               atol=1e-12)


# ----------------------------------------------------------------------------------------
# identities that fail if a method is broken

def test_resize_conv_with_identity_conv_is_bilinear():
    up = ResizeConv(3, 5)
    with torch.no_grad():
        up.conv.weight.zero_()
        up.conv.weight[:, :, 1, 1] = torch.eye(3)
        up.conv.bias.zero_()
    source = torch.randn(2, 3, 5, 7)
    expected = F.interpolate(source, (13, 9), mode='bilinear', align_corners=False)
    torch.testing.assert_close(up(source, torch.randn(2, 5, 13, 9)), expected)


def _box_then_nearest(source, kernel_size, scale):
    """Uniform k x k weights: a zero-padded box filter at the low resolution, then nearest."""
    box = F.avg_pool2d(source, kernel_size, stride=1, padding=kernel_size // 2,
                       count_include_pad=True)
    return nearest_up(box, scale)


@pytest.mark.parametrize('scale', [2, 3])
def test_carafe_constant_kernels_are_nearest_or_box(scale):
    up = CARAFE(3, 1, scale_factor=scale).double()
    source = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    guidance = torch.zeros(2, 1, 4 * scale, 5 * scale, dtype=torch.float64)
    with torch.no_grad():
        up.content_encoder.weight.zero_()
        up.content_encoder.bias.zero_()
    torch.testing.assert_close(up(source, guidance), _box_then_nearest(source, 5, scale))
    with torch.no_grad():  # logit 60 on the centre tap (12) of every sub-pixel's kernel
        up.content_encoder.bias.view(25, scale * scale)[12] = 60.0
    torch.testing.assert_close(up(source, guidance), nearest_up(source, scale))


def test_sapa_with_one_tap_is_nearest_and_without_queries_is_box():
    source, guidance = inputs(dtype=torch.float64)
    up = build('SAPA', torch.float64, up_kernel=1)
    torch.testing.assert_close(up(source, guidance), nearest_up(source, 2))
    up = build('SAPA', torch.float64)
    with torch.no_grad():
        up.query.weight.zero_()
        up.query.bias.zero_()
    torch.testing.assert_close(up(source, guidance), _box_then_nearest(source, 5, 2))


def test_a2u_without_kernel_weights_is_box():
    up = build('A2U', torch.float64)
    with torch.no_grad():
        up.kernel_weights.weight.zero_()
        up.kernel_weights.bias.zero_()
    source, guidance = inputs(dtype=torch.float64)
    torch.testing.assert_close(up(source, guidance), _box_then_nearest(source, 3, 2))


def test_indexnet_with_zero_logits_is_half_nearest():
    up = build('IndexNet', torch.float64)
    with torch.no_grad():
        up.index_net[-1].weight.zero_()
    source, guidance = inputs(dtype=torch.float64)
    torch.testing.assert_close(up(source, guidance), 0.5 * nearest_up(source, 2))


def test_fade_gate_selects_guidance_or_reassembly():
    up = build('FADE', torch.float64)
    source, guidance = inputs(dtype=torch.float64)
    with torch.no_grad():
        up.gate.weight.zero_()
        up.gate.bias.fill_(60.0)
    torch.testing.assert_close(up(source, guidance), guidance)
    with torch.no_grad():
        up.gate.bias.fill_(-60.0)
        up.content_encoder.weight.zero_()
        up.content_encoder.bias.zero_()
    torch.testing.assert_close(up(source, guidance), _box_then_nearest(source, 5, 2))


@pytest.mark.parametrize('scale', [2, 3])
def test_dysample_without_offsets_is_bilinear(scale):
    up = build('DySample', scale_factor=scale)
    with torch.no_grad():
        up.offset.weight.zero_()
        up.offset.bias.zero_()
    source, guidance = inputs((4, 5), (4 * scale, 5 * scale))
    expected = F.interpolate(source, scale_factor=scale, mode='bilinear', align_corners=False)
    torch.testing.assert_close(up(source, guidance), expected)


def test_dysample_offsets_move_samples_per_group():
    up = build('DySample')
    with torch.no_grad():
        up.offset.weight.zero_()
        up.offset.bias.zero_()
        # offset channel ((xy * groups + g) * s + a) * s + b: group 1 looks one source
        # pixel to the right (offset 1 = bias * scope)
        up.offset.bias.view(2, 2, 4)[0, 1] = 1 / up.scope
    source, guidance = inputs((4, 5), (8, 10))
    out = up(source, guidance)
    bilinear = F.interpolate(source, scale_factor=2, mode='bilinear', align_corners=False)
    shifted = torch.cat([source[..., 1:], source[..., -1:]], dim=-1)
    torch.testing.assert_close(out[:, :2], bilinear[:, :2])
    # except in the first column, where the shifted map's bilinear clamps at its own edge
    expected = F.interpolate(shifted, scale_factor=2, mode='bilinear', align_corners=False)
    torch.testing.assert_close(out[:, 2:, :, 1:], expected[:, 2:, :, 1:])


# ----------------------------------------------------------------------------------------
# gradients, dtypes

@pytest.mark.parametrize('name', METHODS)
def test_gradcheck_inputs_and_parameters(name):
    up = build(name, torch.float64, **GRADCHECK_OPTIONS.get(name, {}))
    source, guidance = inputs((2, 3), (4, 5), batch=1, dtype=torch.float64)
    names = [key for key, _ in up.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in up.parameters()]

    def run(source, guidance, *values):
        return functional_call(up, dict(zip(names, values)), (source, guidance))

    source.requires_grad_(True), guidance.requires_grad_(True)
    assert torch.autograd.gradcheck(up, (source, guidance))
    # fast mode (random projections of the Jacobian) keeps the ~1000 inputs affordable
    assert torch.autograd.gradcheck(run, (source, guidance, *params), fast_mode=True)


def _cpu_supports(dtype):
    """torch < 2.2 has no CPU float16 convolutions."""
    try:
        F.conv2d(torch.ones(1, 1, 2, 2, dtype=dtype), torch.ones(1, 1, 1, 1, dtype=dtype))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('name', METHODS)
def test_half_precision_close_to_float32(name, dtype):
    if not _cpu_supports(dtype):
        pytest.skip(f'this torch has no CPU {dtype} convolutions')
    source, guidance = inputs((6, 7), (12, 14))
    expected = build(name)(source, guidance)
    out = build(name, dtype)(source.to(dtype), guidance.to(dtype))
    assert out.dtype == dtype and out.shape == (2, CHANNELS, 12, 14)
    assert torch.isfinite(out).all()
    error = (out.float() - expected).abs().max()
    assert error < 0.05 * expected.abs().max(), (name, dtype, error)


@pytest.mark.parametrize('name', METHODS)
def test_float32_shapes_and_backward(name):
    up = build(name).train()
    source, guidance = inputs((5, 6), (10, 12))
    source.requires_grad_(True)
    out = up(source, guidance)
    assert out.shape == (2, CHANNELS, 10, 12) and out.dtype == torch.float32
    out.square().mean().backward()
    assert torch.isfinite(source.grad).all() and source.grad.abs().sum() > 0
    assert all(p.grad is not None for p in up.parameters())


@pytest.mark.parametrize('name', METHODS)
def test_runs_under_autocast(name):
    # mixed precision (tools/train.py --amp): convolutions come out in bfloat16 while the
    # source and guidance stay float32
    source, guidance = inputs((6, 7), (12, 14))
    up = build(name)
    expected = up(source, guidance)
    source.requires_grad_(True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = up(source, guidance)
    assert (out.float() - expected).abs().max() < 0.05 * expected.abs().max()
    out.float().sum().backward()
    assert torch.isfinite(source.grad).all()


@pytest.mark.parametrize('name', ['CARAFE', 'A2U', 'SAPA', 'FADE'])
def test_windows_run_on_the_compiled_ops(monkeypatch, name):
    """No (B, C*k*k, H, W) unfold is made, forward or backward."""
    up = build(name)
    source, guidance = inputs()
    source.requires_grad_(True)

    def forbidden(*args, **kwargs):
        raise AssertionError(f'{name} unfolded its windows')

    monkeypatch.setattr(F, 'unfold', forbidden)
    up(source, guidance).sum().backward()
    assert source.grad is not None


def test_parameter_counts_at_the_table_2_setting():
    """256 channels per stage; x6 for SegFormer-B1's six stages (see the docstrings)."""
    counts = {cls.__name__: sum(p.numel() for p in cls(256, 256).parameters())
              for cls in (ResizeConv, CARAFE, IndexNet, A2U, SAPA, FADE, DySample)}
    assert counts == dict(ResizeConv=590080, CARAFE=74148, IndexNet=2100224, A2U=10790,
                          SAPA=17472, FADE=47514, DySample=8224)
    assert sum(p.numel() for p in SAPA(256, 256, embedding_dim=64).parameters()) == 33920
    m2o = IndexNet(256, 256, index_block='m2o', nonlinear=False, context=False)
    assert sum(p.numel() for p in m2o.parameters()) == 1048576


# ----------------------------------------------------------------------------------------
# sizes

@pytest.mark.parametrize('name', INTEGER_SCALE)
def test_guidance_one_pixel_short_is_the_crop_of_the_x2_result(name):
    up = build(name, torch.float64)
    source, guidance = inputs((5, 7), (9, 13), dtype=torch.float64)  # e.g. 65 -> 129
    out = up(source, guidance)
    assert out.shape == (2, CHANNELS, 9, 13)
    exact = up(source, F.pad(guidance, [0, 1, 0, 1], mode='replicate'))
    if name == 'FADE':  # the guidance's own conv zero-pads at its true last row/column
        out, exact = out[..., :-1, :-1], exact[..., :8, :12]
    torch.testing.assert_close(out, exact[..., :out.shape[-2], :out.shape[-1]], rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize('name', ['CARAFE', 'SAPA', 'FADE', 'DySample'])
def test_scale_3_accepts_up_to_two_pixels_short(name):
    up = build(name, scale_factor=3)
    source, _ = inputs((4, 5), (12, 15))
    for size in ((12, 15), (11, 14), (10, 13)):
        assert up(source, torch.randn(2, CHANNELS, *size)).shape == (2, CHANNELS, *size)
    with pytest.raises(ValueError, match=rf'{name} upsamples by an integer factor of 3: for '
                       r'a 4 x 5 source the guidance \(the output size\) must be 12 x 15, or '
                       r'up to 2 pixel\(s\) smaller per side .* got 9 x 15'):
        up(source, torch.randn(2, CHANNELS, 9, 15))


@pytest.mark.parametrize('guidance_size', [(8, 12), (11, 12), (10, 14), (20, 24)])
@pytest.mark.parametrize('name', INTEGER_SCALE)
def test_other_sizes_are_refused_clearly(name, guidance_size):
    up = build(name)
    source, guidance = inputs((5, 6), guidance_size)
    cls_name = METHODS[name][0].__name__
    with pytest.raises(ValueError, match=rf'{cls_name} upsamples by an integer factor of 2: '
                       r'for a 5 x 6 source the guidance \(the output size\) must be 10 x 12, '
                       r'or up to 1 pixel\(s\) smaller per side \(ceil\(H / 2\) = h, ceil\(W '
                       rf'/ 2\) = w, as for 129 -> 65\), got {guidance_size[0]} x '
                       rf'{guidance_size[1]}; .*use ResizeConv for arbitrary sizes'):
        up(source, guidance)


@pytest.mark.parametrize('guidance_size', [(9, 13), (17, 3), (5, 7), (1, 1)])
def test_resize_conv_reaches_any_size(guidance_size):
    source, guidance = inputs((5, 7), guidance_size)
    assert build('ResizeConv')(source, guidance).shape == (2, CHANNELS, *guidance_size)


def test_smallest_maps_work():
    source, guidance = inputs((1, 1), (2, 2))
    for name in METHODS:
        assert build(name)(source, guidance).shape == (2, CHANNELS, 2, 2), name
        assert build(name)(source, guidance[..., :1, :1]).shape == (2, CHANNELS, 1, 1), name


@pytest.mark.parametrize('name', METHODS)
def test_empty_batch_gives_an_empty_result(name):
    up = build(name).train()
    source, guidance = inputs(batch=0)
    source.requires_grad_(True)
    out = up(source, guidance)
    assert out.shape == (0, CHANNELS, 10, 12)
    out.sum().backward()
    assert source.grad.shape == source.shape


def test_a2u_refuses_one_value_per_norm_group_clearly():
    guidance_dim = 8  # one channel per norm group
    up = A2U(CHANNELS, guidance_dim, norm_groups=guidance_dim)
    source = torch.randn(1, CHANNELS, 1, 1)
    message = (r'A2U: its GroupNorm of norm_groups=8 over guidance_dim=8 channels normalises '
               r'one value per group for a 1 x 1 source .* use a source of at least 2 pixels or '
               r'fewer norm_groups')
    for mode in (True, False):
        with pytest.raises(ValueError, match=message):
            up.train(mode)(source, torch.randn(1, guidance_dim, 2, 2))
    assert up(torch.randn(1, CHANNELS, 1, 2), torch.randn(1, guidance_dim, 2, 4)).shape == \
        (1, CHANNELS, 2, 4)


# ----------------------------------------------------------------------------------------
# errors

@pytest.mark.parametrize('name', METHODS)
def test_bad_inputs_are_rejected_clearly(name):
    up = build(name)
    owner = METHODS[name][0].__name__
    source, guidance = inputs()
    with pytest.raises(ValueError, match=rf'{owner}: source and guidance must be 4-D'):
        up(source[0], guidance)
    with pytest.raises(ValueError, match=rf'{owner}: source must be \(B, 4, h, w\) with h, w '
                       r'>= 1 \(source_dim=4\), got \(2, 3, 5, 6\)'):
        up(source[:, :3], guidance)
    with pytest.raises(ValueError, match=rf'{owner}: guidance must be \(B, 4, H, W\) with H, '
                       r'W >= 1 \(guidance_dim=4\), got \(2, 5, 10, 12\)'):
        up(source, torch.cat([guidance, guidance[:, :1]], 1))
    with pytest.raises(ValueError, match=rf'{owner}: source batch 1 != guidance batch 2'):
        up(source[:1], guidance)
    with pytest.raises(TypeError, match=rf'{owner}: guidance must be a torch.Tensor'):
        up(source, guidance.numpy())


@pytest.mark.parametrize('build_module, message', [
    (lambda: ResizeConv(0, 3), r'ResizeConv: source_dim must be an integer >= 1, got 0'),
    (lambda: ResizeConv(3, 2.0), r'ResizeConv: guidance_dim must be an integer >= 1, got 2.0'),
    (lambda: ResizeConv(3, 3, kernel_size=2), r'ResizeConv: kernel_size must be an odd '
     r'integer >= 1, got 2'),
    (lambda: CARAFE(3, 3, scale_factor=0), r'CARAFE: scale_factor must be an integer >= 1'),
    (lambda: CARAFE(3, 3, up_kernel=4), r'CARAFE: up_kernel must be an odd integer >= 1, got 4'),
    (lambda: CARAFE(3, 3, encoder_kernel=True), r'CARAFE: encoder_kernel must be an integer'),
    (lambda: CARAFE(3, 3, compressed_channels=0), r'CARAFE: compressed_channels must be an '
     r'integer >= 1, got 0'),
    (lambda: IndexNet(3, 3, index_block='hin'), r"IndexNet: index_block must be one of "
     r"\('holistic', 'm2o', 'o2o'\), got 'hin'"),
    (lambda: IndexNet(3, 4, index_block='m2o'), r'IndexNet: .* guidance_dim \(4\) must equal '
     r"source_dim \(3\); use index_block='holistic' otherwise"),
    (lambda: IndexNet(3, 3, nonlinear='yes'), r'IndexNet: nonlinear must be one of'),
    (lambda: A2U(3, 48), r'A2U: norm_groups \(32\) must divide guidance_dim \(48\)'),
    (lambda: A2U(3, 32, encoder_kernel=1), r'A2U: encoder_kernel must be an integer >= 2'),
    (lambda: A2U(3, 32, up_kernel=2), r'A2U: up_kernel must be an odd integer >= 1, got 2'),
    (lambda: SAPA(3, 3, embedding_dim=0), r'SAPA: embedding_dim must be an integer >= 1'),
    (lambda: SAPA(3, 3, scale_factor=1.5), r'SAPA: scale_factor must be an integer >= 1'),
    (lambda: FADE(3, 4), r'FADE: the gate adds the guidance .* guidance_dim \(4\) must equal '
     r'source_dim \(3\)'),
    (lambda: FADE(3, 3, encoder_kernel=2), r'FADE: encoder_kernel must be an odd integer'),
    (lambda: DySample(6, 3), r'DySample: groups \(4\) must divide source_dim \(6\)'),
    (lambda: DySample(8, 3, scope=0), r'DySample: scope must be a finite number > 0.0, got 0'),
    (lambda: DySample(8, 3, groups=0), r'DySample: groups must be an integer >= 1, got 0'),
])
def test_bad_constructor_arguments_are_rejected(build_module, message):
    with pytest.raises(ValueError, match=message):
        build_module()
