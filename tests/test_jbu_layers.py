"""JBU stage and stack against an independent unfold formulation of the spec (sections 2-3)."""
import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from featup_mmseg.layers import (RANGE_KERNELS, JBUStack, JBUStage, accelerator_paths,
                                 jbu_guidance_products, stage_sizes)
from featup_mmseg.layers import bicubic
from featup_mmseg.layers import jbu_stage as jbu_stage_module
from featup_mmseg.layers.bicubic import bicubic_resize, resized_adaptive_conv
from featup_mmseg.layers.jbu_stage import conv1x1, residual_conv1x1
from featup_mmseg.ops import adaptive_conv, use_reference_ops, window_ops

# ----------------------------------------------------------------------------------------
# the spec, step by step, in plain PyTorch with F.unfold (independent of featup_mmseg.ops)


def _windows(x, radius):
    """(B, C, k*k, H, W): every reflect-padded k x k window of x, tap p = i*k + j."""
    batch, channels, height, width = x.shape
    k = 2 * radius + 1
    padded = F.pad(x, [radius] * 4, mode='reflect')
    return F.unfold(padded, k).view(batch, channels, k * k, height, width)


def _conv1x1(x, params, prefix):
    return F.conv2d(x, params[prefix + '.weight'], params[prefix + '.bias'])


def _mlp(x, params, prefix, training=False):  # Conv1x1, GELU, Dropout2d(0.1), Conv1x1
    hidden = F.dropout2d(F.gelu(_conv1x1(x, params, prefix + '.0')), 0.1, training)
    return _conv1x1(hidden, params, prefix + '.3')


def spec_stage(params, source, guidance, radius, range_kernel='softmax', training=False):
    k = 2 * radius + 1
    height, width = guidance.shape[-2:]
    keys = guidance if range_kernel == 'no_mlp' else _mlp(guidance, params, 'range_proj',
                                                          training)  # 1
    windows = _windows(keys, radius)  # (B, D, k*k, H, W)
    centre = keys.unsqueeze(2)
    if range_kernel in ('softmax', 'no_mlp'):
        logits = (windows * centre).sum(1)  # 2
        temperature = params['range_temp'].exp().clamp(1e-4, 1e4)
        range_k = torch.softmax(temperature * logits, dim=1)  # 3
    elif range_kernel == 'gaussian_euclidean':
        distance = (centre - windows).square().sum(1)
        range_k = torch.exp(-distance / (2 * params['sigma_range']**2))
    else:
        cosine = (centre * windows).sum(1) / (centre.norm(dim=1) * windows.norm(dim=1))
        range_k = torch.exp(-(1 - cosine) / (2 * params['sigma_range']**2))
    u = torch.linspace(-1, 1, k, dtype=source.dtype)
    spatial = torch.stack([
        torch.exp(-(u[i]**2 + u[j]**2) / (2 * params['sigma_spatial']**2))
        for i in range(k) for j in range(k)
    ]).view(1, k * k, 1, 1)  # 4
    kernel = range_k * spatial
    kernel = kernel / kernel.sum(1, keepdim=True).clamp(min=1e-7)  # 5
    kernel = kernel + 0.1 * _mlp(torch.cat([kernel, guidance], 1), params, 'fixup_proj',
                                 training)  # 6
    upsampled = F.interpolate(source, (height, width), mode='bicubic', align_corners=False)  # 7
    return (_windows(upsampled, radius) * kernel.unsqueeze(1)).sum(2)  # 8


def spec_stack(params, source, image, num_stages=4, radius=3, training=False):
    """FeatUp's stack: x2 per stage, guidance = image pooled to each stage's size."""
    features = source
    for index in range(1, num_stages + 1):
        stage_params = {key[len(f'up{index}.'):]: value for key, value in params.items()
                        if key.startswith(f'up{index}.')}
        size = (features.shape[2] * 2, features.shape[3] * 2)
        features = spec_stage(stage_params, features, F.adaptive_avg_pool2d(image, size), radius,
                              training=training)
    return features + 0.1 * _conv1x1(F.dropout2d(features, 0.2, training), params,
                                     'fixup_proj.1')


def _randomise(module, seed=0):
    """Non-default values for every parameter, scalars included, so each step matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() == 0:  # temperatures and sigmas: positive, away from 0 and 1
                param.copy_(0.6 + 0.8 * torch.rand((), generator=gen, dtype=param.dtype))
            else:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * 0.3)
    return module


# ----------------------------------------------------------------------------------------
# faithfulness

@pytest.mark.parametrize('range_kernel', RANGE_KERNELS)
@pytest.mark.parametrize('sizes', [((5, 7), (10, 14)), ((9, 6), (13, 20))], ids=str)
def test_stage_matches_spec(range_kernel, sizes):
    (h, w), (height, width) = sizes
    stage = _randomise(JBUStage(guidance_dim=6, key_dim=5, radius=3,
                                range_kernel=range_kernel).double()).eval()
    source = torch.randn(2, 4, h, w, dtype=torch.float64)
    guidance = torch.randn(2, 6, height, width, dtype=torch.float64)
    params = dict(stage.named_parameters())
    out = stage(source, guidance)
    assert out.shape == (2, 4, height, width)
    expected = spec_stage(params, source, guidance, 3, range_kernel)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_stage_gradients_match_spec():
    stage = _randomise(JBUStage(guidance_dim=3).double()).eval()
    source = torch.randn(1, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    guidance = torch.randn(1, 3, 12, 10, dtype=torch.float64, requires_grad=True)
    params = dict(stage.named_parameters())
    inputs = [source, guidance, *params.values()]
    got = torch.autograd.grad(stage(source, guidance).square().sum(), inputs)
    want = torch.autograd.grad(spec_stage(params, source, guidance, 3).square().sum(), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_stack_matches_spec_featup_setting():
    stack = _randomise(JBUStack(feat_dim=8).double()).eval()
    source = torch.randn(1, 8, 14, 14, dtype=torch.float64)
    image = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    out = stack(source, image)
    assert out.shape == (1, 8, 224, 224)
    expected = spec_stack(dict(stack.named_parameters()), source, image)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_parameter_names_and_counts_are_featups():
    stage = JBUStage(guidance_dim=3)
    assert set(dict(stage.named_parameters())) == {
        'range_temp', 'sigma_spatial', 'range_proj.0.weight', 'range_proj.0.bias',
        'range_proj.3.weight', 'range_proj.3.bias', 'fixup_proj.0.weight',
        'fixup_proj.0.bias', 'fixup_proj.3.weight', 'fixup_proj.3.bias'
    }
    for guidance_dim, expected in ((3, 6233), (256, 26726)):  # spec section 2
        assert sum(p.numel() for p in JBUStage(guidance_dim).parameters()) == expected
    assert stage.range_temp.item() == 0.0 and stage.sigma_spatial.item() == 1.0
    stack_keys = set(JBUStack(feat_dim=16).state_dict())
    assert {'up4.range_proj.3.bias', 'fixup_proj.1.weight', 'fixup_proj.1.bias'} <= stack_keys


# ----------------------------------------------------------------------------------------
# sizes

@pytest.mark.parametrize('input_size, kwargs, expected', [
    ((14, 14), {}, (224, 224)),
    ((16, 16), dict(output_size=224), (224, 224)),
    ((7, 7), dict(output_size=(224, 224)), (224, 224)),
    ((10, 7), dict(output_size=(75, 61)), (75, 61)),
    ((6, 9), dict(scale_factor=3), (18, 27)),
])
def test_stack_reaches_any_output_size(input_size, kwargs, expected):
    stack = JBUStack(feat_dim=4).eval()
    image = torch.randn(2, 3, 224, 224)
    out = stack(torch.randn(2, 4, *input_size), image, **kwargs)
    assert out.shape == (2, 4, *expected)
    assert torch.isfinite(out).all()


def test_stack_output_at_image_size_is_guided_by_the_image_itself():
    stack = _randomise(JBUStack(feat_dim=4, num_stages=2).double()).eval()
    image = torch.randn(1, 3, 40, 36, dtype=torch.float64)
    source = torch.randn(1, 4, 10, 9, dtype=torch.float64)
    out = stack(source, image, output_size=image.shape[-2:])
    up2 = stack.up2
    hidden = stack.up1(source, F.adaptive_avg_pool2d(image, stage_sizes((10, 9), (40, 36),
                                                                          2)[0]))
    last = up2(hidden, image)
    torch.testing.assert_close(out, last + 0.1 * stack.fixup_proj(last))


def test_stage_sizes_are_geometric():
    assert stage_sizes((14, 14), (224, 224), 4) == [(28, 28), (56, 56), (112, 112), (224, 224)]
    assert stage_sizes((16, 16), (224, 224), 4) == [(31, 31), (60, 60), (116, 116), (224, 224)]
    assert stage_sizes((7, 10), (224, 100), 2) == [(40, 32), (224, 100)]


# ----------------------------------------------------------------------------------------
# train / eval, errors, memory

def test_dropout_only_in_train_mode():
    stack = JBUStack(feat_dim=8)
    source, image = torch.randn(2, 8, 6, 6), torch.randn(2, 3, 96, 96)
    stack.train()
    torch.manual_seed(0)
    first = stack(source, image)
    second = stack(source, image)
    assert not torch.allclose(first, second)
    stack.eval()
    torch.testing.assert_close(stack(source, image), stack(source, image), rtol=0, atol=0)


@pytest.mark.parametrize('call, message', [
    (lambda: JBUStage(3, range_kernel='attention'), r"range_kernel must be one of .*'attention'"),
    (lambda: JBUStage(3)(torch.randn(1, 4, 4, 4), torch.randn(1, 5, 8, 8)),
     r'guidance must have guidance_dim=3 channels, got shape \(1, 5, 8, 8\)'),
    (lambda: JBUStage(3)(torch.randn(2, 4, 4, 4), torch.randn(1, 3, 8, 8)),
     r'source batch 2 != guidance batch 1'),
    (lambda: JBUStage(3)(torch.randn(1, 4, 2, 2), torch.randn(1, 3, 3, 8)),
     r'JBUStage: the guidance \(the output size\) must be at least 4 x 4 for radius 3 .*'
     r'got \(3, 8\); upsample to a larger size or use a smaller radius'),
    (lambda: JBUStack(8)(torch.randn(1, 4, 4, 4), torch.randn(1, 3, 64, 64)),
     r'source must be \(B, 8, h, w\) with h, w >= 1, got \(1, 4, 4, 4\)'),
    (lambda: JBUStack(4)(torch.randn(1, 4, 0, 0), torch.randn(1, 3, 64, 64)),
     r'source must be \(B, 4, h, w\) with h, w >= 1, got \(1, 4, 0, 0\)'),
    (lambda: JBUStack(4)(torch.randn(1, 4, 8, 8), torch.randn(1, 3, 64, 64), output_size=6),
     r'no smaller than the input \(8, 8\), got \(6, 6\)'),
    (lambda: JBUStack(4)(torch.randn(1, 4, 8, 8), torch.randn(1, 3, 64, 64), output_size=64,
                         scale_factor=8), r'output_size or scale_factor, not both'),
    (lambda: JBUStack(4)(torch.randn(1, 4, 1, 1), torch.randn(1, 3, 64, 64), output_size=16),
     r'upsampling \(1, 1\) to \(16, 16\) in 4 stages goes through \(2, 2\), \(4, 4\), '
     r'\(8, 8\), \(16, 16\), but radius-3 stages need outputs of at least 4 x 4; upsample '
     r'to a larger size or use fewer stages'),
])
def test_bad_input_is_rejected_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize('build, message', [
    (lambda: JBUStage(0), r'JBUStage: guidance_dim must be an integer >= 1, got 0'),
    (lambda: JBUStage(3, key_dim=0), r'JBUStage: key_dim must be an integer >= 1, got 0'),
    (lambda: JBUStage(3, radius=0), r'JBUStage: radius must be an integer >= 1, got 0'),
    (lambda: JBUStage(3, radius=-2), r'JBUStage: radius must be an integer >= 1, got -2'),
    (lambda: JBUStage(3, radius=2.5), r'JBUStage: radius must be an integer >= 1, got 2.5'),
    (lambda: JBUStack(0), r'JBUStack: feat_dim must be an integer >= 1, got 0'),
    (lambda: JBUStack(8, num_stages=0), r'JBUStack: num_stages must be an integer >= 1, got 0'),
    (lambda: JBUStack(8, num_stages=True), r'num_stages must be an integer >= 1, got True'),
    (lambda: JBUStack(8, key_dim=-1), r'JBUStage: key_dim must be an integer >= 1, got -1'),
    (lambda: JBUStack(8, range_kernel='gauss'), r"range_kernel must be one of .*got 'gauss'"),
])
def test_bad_constructor_arguments_are_rejected(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_smallest_guidance_works():
    stage = JBUStage(3, radius=2).eval()
    assert stage.min_guidance_size == 3
    out = stage(torch.randn(1, 4, 2, 2), torch.randn(1, 3, 3, 3))
    assert out.shape == (1, 4, 3, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r'at least 3 x 3 for radius 2'):
        stage(torch.randn(1, 4, 2, 2), torch.randn(1, 3, 2, 3))


@pytest.mark.parametrize('range_kernel', ['softmax', 'no_mlp', 'gaussian_cosine'])
def test_stage_never_unfolds_or_pads(monkeypatch, range_kernel):
    """With the compiled ops, no (B, D*k*k, H, W) unfold and no padded copy is made."""
    stage = JBUStage(guidance_dim=16, range_kernel=range_kernel)
    source = torch.randn(2, 8, 8, 8, requires_grad=True)
    guidance = torch.randn(2, 16, 16, 16, requires_grad=True)

    def forbidden(*args, **kwargs):
        raise AssertionError('JBUStage materialised an unfold or a padded copy')

    monkeypatch.setattr(F, 'unfold', forbidden)
    monkeypatch.setattr(F, 'pad', forbidden)
    stage(source, guidance).sum().backward()
    assert source.grad is not None and guidance.grad is not None


def test_stage_runs_under_autocast():
    # mixed precision (tools/train.py --amp on GPU): the conv outputs come out in bfloat16 or
    # float16 while the resize stays in float32; the stage keeps its operands consistent.
    torch.manual_seed(0)
    stage = JBUStage(guidance_dim=16).eval()
    source = torch.randn(2, 8, 8, 8, requires_grad=True)
    guidance = torch.randn(2, 16, 16, 16)
    reference = stage(source, guidance)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = stage(source, guidance)
    assert (out.float() - reference).abs().max() < 0.02 * reference.abs().max()
    out.float().sum().backward()
    assert source.grad is not None and torch.isfinite(source.grad).all()


# ----------------------------------------------------------------------------------------
# the stage's own formulations of its operators (for speed): same numbers as PyTorch's

@pytest.mark.parametrize('sizes', [((64, 64), (128, 128)), ((5, 7), (10, 14)), ((9, 6), (13, 20)),
                                   ((1, 3), (4, 5)), ((7, 7), (7, 7)), ((3, 2), (8, 9))], ids=str)
def test_bicubic_resize_is_pytorchs(sizes):
    """x2, non-x2, odd, 1-pixel and identity sizes; border rows and columns included."""
    (h, w), size = sizes
    source = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, *size, dtype=torch.float64)
    got = bicubic_resize(source, size)
    want = F.interpolate(source, size, mode='bicubic', align_corners=False)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    got_grad, = torch.autograd.grad(got, source, grad)
    want_grad, = torch.autograd.grad(want, source, grad)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)
    # float32: the matrices hold F.interpolate's own float32 weights
    source32 = source.detach().float().requires_grad_()
    torch.testing.assert_close(bicubic_resize(source32, size),
                               F.interpolate(source32, size, mode='bicubic', align_corners=False),
                               rtol=0, atol=1e-5)


def test_bicubic_resize_gradcheck_and_plain_path_without_grad():
    source = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: bicubic_resize(s, (7, 6)), (source,))
    assert torch.autograd.gradgradcheck(lambda s: bicubic_resize(s, (7, 6)), (source,))
    with torch.no_grad():
        torch.testing.assert_close(
            bicubic_resize(source, (7, 6)),
            F.interpolate(source, (7, 6), mode='bicubic', align_corners=False), rtol=0, atol=0)


def _cpu_supports_matmul(dtype):
    """torch < 2.2 has no CPU float16 matrix products."""
    try:
        torch.ones(1, 2, 2, dtype=dtype).bmm(torch.ones(1, 2, 2, dtype=dtype))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_bicubic_resize_half_precision(dtype):
    if not _cpu_supports_matmul(dtype):
        pytest.skip(f'this torch has no CPU {dtype} matrix products')
    source = torch.randn(2, 3, 6, 5).to(dtype).requires_grad_()
    got = bicubic_resize(source, (12, 9))
    assert got.dtype == dtype
    want = F.interpolate(source.detach().float(), (12, 9), mode='bicubic', align_corners=False)
    torch.testing.assert_close(got.float(), want, rtol=0, atol=0.05)
    got.float().sum().backward()
    assert source.grad.dtype == dtype and torch.isfinite(source.grad).all()


@pytest.mark.parametrize('shape', [(2, 5, 3, 4), (1, 49, 1, 7)])
def test_conv1x1_is_conv2d(shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, shape[1], 1, 1, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(shape[0], 6, *shape[2:], dtype=torch.float64)
    got, want = conv1x1(x, weight, bias), F.conv2d(x, weight, bias)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for g, w in zip(torch.autograd.grad(got, (x, weight, bias), grad),
                    torch.autograd.grad(want, (x, weight, bias), grad)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    tiny = torch.randn(1, shape[1], 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv1x1, (tiny, weight, bias))
    # weight slices: the split fixup MLP
    torch.testing.assert_close(conv1x1(x[:, 1:3], weight[:2, 1:3]),
                               F.conv2d(x[:, 1:3], weight[:2, 1:3]), rtol=0, atol=1e-12)


def test_conv1x1_half_precision_and_autocast():
    x, weight, bias = torch.randn(2, 8, 4, 4), torch.randn(5, 8, 1, 1), torch.randn(5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got, want = conv1x1(x, weight, bias), F.conv2d(x, weight, bias)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=0.02, atol=0.05)
    if not _cpu_supports_matmul(torch.float16):
        return  # torch < 2.2: no CPU float16 products (nor convolutions) at all
    half = conv1x1(x.half(), weight.half(), bias.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), F.conv2d(x, weight, bias), rtol=0.01, atol=0.02)


@pytest.mark.parametrize('padding_mode', ['reflect', 'zeros'])
@pytest.mark.parametrize('chunk_bytes', [1, 1600, 2**30], ids=['1ch', '3ch', 'whole'])
def test_resized_adaptive_conv_is_resize_then_aggregate(monkeypatch, chunk_bytes, padding_mode):
    """Chunk by chunk (one channel, uneven chunks of 3 of 7, all channels; on CPU one batch
    element at a time) the same values and gradients as resizing first, at a non-x2 size."""
    monkeypatch.setattr(bicubic, 'RESIZED_CHUNK_BYTES', chunk_bytes)
    source = torch.randn(2, 7, 5, 4, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(2, 9, 9, 7, dtype=torch.float64, requires_grad=True)
    got = resized_adaptive_conv(source, kernel, padding_mode)
    want = adaptive_conv(F.interpolate(source, (9, 7), mode='bicubic', align_corners=False),
                         kernel, padding_mode)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    grad = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, (source, kernel), grad)
    for g, w in zip(torch.autograd.grad(got, (source, kernel), grad), want_grads):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    # only one of the two needing a gradient (frozen backbone features: only the kernel)
    frozen = source.detach()
    grad_kernel, = torch.autograd.grad(resized_adaptive_conv(frozen, kernel, padding_mode),
                                       kernel, grad)
    torch.testing.assert_close(grad_kernel, want_grads[1], rtol=0, atol=1e-12)


def test_resized_adaptive_conv_gradients_of_two_orders(monkeypatch):
    monkeypatch.setattr(bicubic, 'RESIZED_CHUNK_BYTES', 400)  # two channels per chunk
    source = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(2, 9, 5, 4, dtype=torch.float64, requires_grad=True)

    def op(s, k):
        return resized_adaptive_conv(s, k, 'reflect')

    assert torch.autograd.gradcheck(op, (source, kernel))
    assert torch.autograd.gradgradcheck(op, (source, kernel))


def test_training_stage_never_keeps_the_resized_features():
    """What autograd stores for a training stage: never a (B, C, H, W) map, i.e. the
    resized features, whose chunks are recomputed in the backward instead."""
    stage = JBUStage(guidance_dim=3).train()
    source = torch.randn(2, 8, 6, 6, requires_grad=True)
    guidance = torch.randn(2, 3, 12, 12)
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = stage(source, guidance)
    assert out.shape == (2, 8, 12, 12) and (2, 8, 6, 6) in saved
    assert (2, 8, 12, 12) not in saved, saved
    out.sum().backward()
    assert source.grad.shape == source.shape


@pytest.mark.parametrize('grad_layout', [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('out_layout', [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('training', [False, True])
def test_residual_conv1x1_is_dropout_conv_and_sum(training, out_layout, grad_layout):
    """x + 0.1 * Conv2d(Dropout2d(x)): values and gradients, in either output layout and
    for gradients of either layout (pretraining's views backpropagate channels-last ones),
    the dropout masks included (the same RNG state draws the same channels)."""
    dropout, conv = torch.nn.Dropout2d(0.5), torch.nn.Conv2d(6, 6, 1).double()
    dropout.train(training)
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    got = residual_conv1x1(x, dropout, conv, 0.1, memory_format=out_layout)
    assert got.is_contiguous(memory_format=out_layout)
    torch.manual_seed(1)
    want = x + 0.1 * conv(dropout(x))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    grad = torch.randn_like(want).contiguous(memory_format=grad_layout)
    inputs = (x, conv.weight, conv.bias)
    for g, w in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    if training:  # the masks did drop channels, so the comparison covered them
        assert not torch.allclose(want, x + 0.1 * conv(x))
    else:  # its own backward is differentiable
        assert torch.autograd.gradgradcheck(
            lambda t: residual_conv1x1(t, dropout, conv, 0.1, memory_format=out_layout), (x,))


def test_stack_writes_either_layout_with_the_same_values_and_gradients():
    stack = JBUStack(5, num_stages=2).double()
    source = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    image = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    grad = torch.randn(2, 5, 16, 12, dtype=torch.float64)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)  # the same dropout masks
        out = stack(source, image, memory_format=layout)
        assert out.is_contiguous(memory_format=layout)
        results.append((out, *torch.autograd.grad(out, [source, *stack.parameters()], grad)))
    for contiguous, channels_last in zip(*results):
        torch.testing.assert_close(channels_last, contiguous, rtol=0, atol=1e-12)


def test_stack_trains_like_the_spec_with_dropout():
    """A train-mode JBUStack (chunked resize and aggregation, fixup dropout folded into its
    weights, kernels recomputed in the backward) gives the spec's values and gradients
    under the same dropout masks (the same RNG state)."""
    stack = _randomise(JBUStack(feat_dim=4, num_stages=2, radius=2).double()).train()
    source = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    image = torch.randn(2, 3, 20, 24, dtype=torch.float64)
    params = dict(stack.named_parameters())
    inputs = [source, *params.values()]
    torch.manual_seed(3)
    out = stack(source, image)
    torch.manual_seed(3)
    expected = spec_stack(params, source, image, num_stages=2, radius=2, training=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, inputs, grad),
                    torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
    with torch.no_grad():  # the masks did drop channels, so the comparison covered them
        assert not torch.allclose(out, stack.eval()(source, image))


@pytest.mark.parametrize('paths', ['cpu', 'accelerator'])
def test_both_code_paths_train_like_the_spec(paths):
    """CPU tensors on the accelerators' code path (accelerator_paths: stored kernels, 1x1
    convolutions, whole-batch resize chunks) give the spec's values and gradients too, and
    really take that path: it dispatches convolutions, the CPU path none."""
    from torch.utils._python_dispatch import TorchDispatchMode
    stack = _randomise(JBUStack(feat_dim=4, num_stages=2, radius=2).double()).train()
    source = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    image = torch.randn(2, 3, 20, 24, dtype=torch.float64)
    params = dict(stack.named_parameters())
    inputs = [source, *params.values()]
    dispatched = set()

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            dispatched.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    grad = torch.randn(2, 4, 20, 24, dtype=torch.float64)
    torch.manual_seed(3)
    with (accelerator_paths() if paths == 'accelerator' else contextlib.nullcontext()), Ops():
        out = stack(source, image)
        grads = torch.autograd.grad(out, inputs, grad)
    assert ('convolution' in dispatched) == (paths == 'accelerator')
    torch.manual_seed(3)
    expected = spec_stack(params, source, image, num_stages=2, radius=2, training=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    for g, w in zip(grads, torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


@pytest.mark.parametrize('range_kernel', RANGE_KERNELS)
def test_stage_gradients_match_spec_for_every_range_kernel(range_kernel):
    """Gradients of source, guidance and every parameter through the split fixup MLP, the
    1x1 products and the separable resize, at a non-x2 odd size."""
    _assert_stage_matches_spec(_randomise(JBUStage(
        guidance_dim=5, key_dim=4, radius=2, range_kernel=range_kernel).double()).eval())


def _assert_stage_matches_spec(stage):
    """A radius-2 stage's output and gradients (of source, guidance and every parameter)
    equal the spec's, at a non-x2 odd size; returns the guidance used."""
    source = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    guidance = torch.randn(2, 5, 11, 9, dtype=torch.float64, requires_grad=True)
    params = dict(stage.named_parameters())
    inputs = [source, guidance, *params.values()]
    out = stage(source, guidance)
    expected = spec_stage(params, source, guidance, 2, stage.range_kernel_type)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, inputs, grad),
                    torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
    return guidance


@pytest.mark.parametrize('recomputing', [False, True], ids=['stored', 'recomputing'])
def test_stages_sharing_a_guidance_project_it_together_like_the_spec(recomputing, monkeypatch):
    """jbu_guidance_products: one product of the guidance for several stages (here one of
    each range kernel, with different key_dim), the same outputs and gradients as the
    spec's, in train mode too (the same dropout masks); with the kernels and products
    recomputed in the backward (CPU training) and stored (a GPU's path, forced here)."""
    monkeypatch.setattr(jbu_stage_module, 'recomputes_kernel',
                        lambda guidance, real=jbu_stage_module.recomputes_kernel:
                        recomputing and real(guidance))
    stages = [_randomise(JBUStage(guidance_dim=5, key_dim=key_dim, radius=2,
                                  range_kernel=range_kernel).double())
              for key_dim, range_kernel in zip((4, 3, 6, 2), RANGE_KERNELS)]
    sources = [torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
               for _ in stages]
    guidance = torch.randn(2, 5, 11, 9, dtype=torch.float64, requires_grad=True)
    params = [p for stage in stages for p in stage.parameters()]
    inputs = [*sources, guidance, *params]
    for training in (False, True):
        for stage in stages:
            stage.train(training)
        torch.manual_seed(1)
        products = jbu_guidance_products(stages, guidance)
        outs = [stage(source, guidance, products=product)
                for stage, source, product in zip(stages, sources, products)]
        torch.manual_seed(1)
        expected = [stage(source, guidance) for stage, source in zip(stages, sources)]
        if not training:  # the spec's dropouts are identities
            expected = [spec_stage(dict(stage.named_parameters()), source, guidance, 2,
                                   stage.range_kernel_type)
                        for stage, source in zip(stages, sources)]
        for out, want in zip(outs, expected):
            torch.testing.assert_close(out, want, rtol=0, atol=1e-10)
        grads = [torch.randn_like(out) for out in outs]
        for g, w in zip(torch.autograd.grad(outs, inputs, grads),
                        torch.autograd.grad(expected, inputs, grads)):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
    with torch.no_grad():
        products = jbu_guidance_products(stages, guidance)
    with pytest.raises(ValueError, match=r'JBUStage: products must be \(B, n, H, W\) = '
                       r'\(2, 29, 11, 9\) \(the guidance through guidance_projection\(\)\), '
                       r'got \(2, 29, 11, 8\)'):
        stages[0](sources[0], guidance, products=products[0][..., :8])
    with pytest.raises(ValueError, match='guidance_dim=5 channels'):
        jbu_guidance_products(stages, guidance[:, :4])


@pytest.mark.parametrize('range_kernel', ['softmax', 'no_mlp'])
@pytest.mark.parametrize('sigma_spatial', [0.12, 1.0])
def test_softmax_kernels_normalise_like_the_spec_with_and_without_the_clamp(
        range_kernel, sigma_spatial):
    """A narrow spatial Gaussian and a sharp softmax: at sigma 0.12 the normalisation's
    1e-7 clamp acts at some pixels (the kernel then sums to less than 1), at 1.0 nowhere
    (it cannot: the sum is at least the Gaussian's smallest tap, exp(-1))."""
    stage = _randomise(JBUStage(guidance_dim=5, key_dim=4, radius=2,
                                range_kernel=range_kernel).double()).eval()
    with torch.no_grad():
        stage.sigma_spatial.fill_(sigma_spatial)
        stage.range_temp.fill_(math.log(200.0))
    guidance = _assert_stage_matches_spec(stage)
    if sigma_spatial == 0.12:
        with torch.no_grad():
            combined = stage.range_kernel(guidance) * stage.spatial_kernel()
        assert (combined.sum(1) < 1e-7).any()  # the clamp acts at some pixels


@pytest.mark.parametrize('range_kernel', RANGE_KERNELS)
def test_cpu_training_stage_stores_only_its_inputs_and_recomputes_the_rest(range_kernel,
                                                                           monkeypatch):
    """CPU training: a stage stores neither its kernel nor anything it is made of, nor
    the resized features, only source, guidance and its parameters; the backward
    recomputes the kernel with the forward's dropout masks, giving the gradients of
    torch's checkpointing of the kernel (the path with products given, or on a GPU)."""
    torch.manual_seed(0)
    stage = _randomise(JBUStage(guidance_dim=6, key_dim=4, range_kernel=range_kernel)
                       .double()).train()
    source = torch.randn(2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    guidance = torch.randn(2, 6, 12, 14, dtype=torch.float64, requires_grad=True)
    inputs = (source, guidance, *stage.parameters())
    grad = torch.randn(2, 5, 12, 14, dtype=torch.float64)
    results = {}
    for recomputing in (True, False):
        monkeypatch.setattr(jbu_stage_module, 'recomputes_kernel',
                            lambda guidance, real=jbu_stage_module.recomputes_kernel:
                            recomputing and real(guidance))
        for shared in (False, True):
            torch.manual_seed(1)
            products = jbu_guidance_products([stage], guidance)[0] if shared else None
            saved = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                          lambda t: t):
                out = stage(source, guidance, products=products)
            if recomputing:
                assert {t.data_ptr() for t in saved} == {t.data_ptr() for t in inputs}
            results[recomputing, shared] = (out, *torch.autograd.grad(out, inputs, grad))
    want = results[False, False]
    for key, got in results.items():
        for tensor, expected in zip(got, want):
            torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize('case', ['frozen stage', 'constant products'])
def test_recomputing_stage_gives_the_gradients_asked_for(case, monkeypatch):
    """A frozen stage (source's and guidance's gradients only) and products computed
    without gradients (constants) through the recomputing path: the gradients of
    checkpointing the kernel, with and without create_graph."""
    torch.manual_seed(0)
    stage = _randomise(JBUStage(guidance_dim=4, key_dim=3, radius=1).double()).train()
    if case == 'frozen stage':
        stage.requires_grad_(False)
    source = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    guidance = torch.randn(1, 4, 8, 9, dtype=torch.float64, requires_grad=True)
    inputs = [source, guidance, *(p for p in stage.parameters() if p.requires_grad)]
    results = []
    for recomputing in (True, False):
        monkeypatch.setattr(jbu_stage_module, 'recomputes_kernel',
                            lambda guidance, real=jbu_stage_module.recomputes_kernel:
                            recomputing and real(guidance))
        for create_graph in (False, True):
            products = None
            if case == 'constant products':
                with torch.no_grad():
                    products = jbu_guidance_products([stage], guidance)[0]
            torch.manual_seed(1)
            out = stage(source, guidance, products=products)
            grads = torch.autograd.grad(out.square().sum(), inputs, allow_unused=True,
                                        create_graph=create_graph)
            # with constant products the softmax kernel does not read the guidance itself
            results.append([torch.zeros_like(t) if g is None else g
                            for g, t in zip(grads, inputs)])
    for grads in results[1:]:
        for got, want in zip(grads, results[0]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_recomputing_stage_trains_in_half_precision(dtype):
    """A stage converted to a half type trains on CPU through the recomputing path: its
    output and gradients in that dtype, close to float32's."""
    if not _cpu_supports_matmul(dtype):
        pytest.skip(f'this torch has no CPU {dtype} matrix products')
    torch.manual_seed(0)
    stage = JBUStage(guidance_dim=6, key_dim=4).eval()
    source = torch.randn(2, 5, 6, 7)
    guidance = torch.randn(2, 6, 12, 14)
    grad = torch.randn(2, 5, 12, 14)
    results = []
    for module, cast in ((stage, torch.float32), (copy.deepcopy(stage).to(dtype), dtype)):
        inputs = [t.to(cast, copy=True).requires_grad_() for t in (source, guidance)]
        out = module(*inputs)
        out.backward(grad.to(cast))
        assert out.dtype == cast and all(t.grad.dtype == cast for t in inputs)
        assert module.fixup_proj[0].weight.grad.dtype == cast
        results.append([out, *(t.grad for t in inputs), module.fixup_proj[0].weight.grad])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got.float(), want, rtol=0.05,
                                   atol=0.05 * want.abs().max().item())


def test_stage_gradcheck_tiny():
    stage = _randomise(JBUStage(guidance_dim=2, key_dim=2, radius=1).double()).eval()
    source = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    guidance = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(stage, (source, guidance))


def test_stage_second_order_gradients():
    """The resized features are recomputed in the backward (not stored): gradients of
    gradients still reach the source through them."""
    stage = _randomise(JBUStage(guidance_dim=2, key_dim=2, radius=1).double()).eval()
    source = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    guidance = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(stage, (source, guidance))
    # with the guidance products given (recomputed in the backward, not stored)
    assert torch.autograd.gradgradcheck(
        lambda s, g: stage(s, g, products=jbu_guidance_products([stage], g)[0]),
        (source, guidance))


@pytest.mark.skipif(
    window_ops.REGISTRATION != 'dispatcher',
    reason='behind torch.autograd.Function, TorchDynamo breaks the graph at the ops')
def test_stage_compiles_with_gradients():
    """fullgraph: the separable resize's autograd.Function traces, and the saved-tensor
    hooks that recompute the resized features stay out of the compiled graph."""
    torch._dynamo.reset()
    stage = _randomise(JBUStage(guidance_dim=3, key_dim=4, radius=1)).eval()
    source = torch.randn(1, 4, 5, 5, requires_grad=True)
    guidance = torch.randn(1, 3, 10, 9, requires_grad=True)
    want = stage(source, guidance)
    want_grads = torch.autograd.grad(want.square().sum(), (source, guidance))
    got = torch.compile(stage, fullgraph=True)(source, guidance)
    got_grads = torch.autograd.grad(got.square().sum(), (source, guidance))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('frozen', [False, True], ids=['trained', 'frozen'])
def test_stage_and_stack_trace_with_gradients_enabled(frozen):
    """torch.jit.trace (FLOP counters, the TorchScript ONNX exporter) with gradients on:
    the sizes reached the compiled resize as 0-d tensors, and the custom autograd
    Functions would be opaque calls. Traced, the stage records its ops themselves."""
    stage = _randomise(JBUStage(guidance_dim=16)).eval()
    stack = _randomise(JBUStack(8, num_stages=2, key_dim=4)).eval()
    cases = [(stage, (torch.randn(1, 16, 8, 8), torch.randn(1, 16, 16, 16))),
             (stack, (torch.randn(1, 8, 4, 4), torch.randn(1, 3, 16, 16)))]
    for module, inputs in cases:
        module.requires_grad_(not frozen)
        traced = torch.jit.trace(module, inputs)
        kinds = {node.kind() for node in traced.inlined_graph.nodes()}
        assert {'featup_mmseg::adaptive_conv', 'aten::upsample_bicubic2d'} <= kinds
        assert 'prim::PythonOp' not in kinds
        with torch.no_grad():
            torch.testing.assert_close(traced(*inputs), module(*inputs))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('reference', [False, True], ids=['compiled', 'reference'])
def test_training_stage_on_cuda_matches_cpu(reference):
    """A GPU takes other training paths (kernel intermediates stored, larger chunks, cuDNN
    1x1 convolutions): the same values and gradients as on CPU; and the reference ops,
    whose backward runs in autograd's CUDA thread, agree too."""
    torch.manual_seed(0)
    stage = JBUStage(guidance_dim=8).double().eval()  # eval: no device-specific dropout draws
    source = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    guidance = torch.randn(2, 8, 12, 13, dtype=torch.float64)
    grad = torch.randn(2, 5, 12, 13, dtype=torch.float64)

    def run(device, use_reference=False):
        module = copy.deepcopy(stage).to(device)
        inputs = [t.to(device).requires_grad_() for t in (source, guidance)]
        params = [p for p in module.parameters()]
        with use_reference_ops() if use_reference else contextlib.nullcontext():
            out = module(*inputs)
            grads = torch.autograd.grad(out, inputs + params, grad.to(device), allow_unused=True)
        return [t.cpu() for t in (out, *grads) if t is not None]

    want = run('cpu')
    got = run('cuda', reference)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
