"""AnyUp (layers/attention_upsamplers/anyup.py): shapes, a dense float64 reference written
from the method's definition (RoPE, the feature-agnostic layer's reshape, masked windowed
attention over all low-res cells), the published-checkpoint converter, gradients, dtypes
and argument errors."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from featup_mmseg.layers.attention_upsamplers.anyup import AnyUp, convert_published_anyup
from featup_mmseg.layers.featup_checkpoint import load_state_dict_strict

F64 = torch.float64
SMALL = dict(qk_dim=16, num_heads=2, lfu_dim=8)  # shortcut conv in the LFU's first block too


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial values everywhere (norm weights and biases start at 1 / 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.add_(noise if name == 'rope.freqs' else 0.3 * noise)
    return model


def _model(seed=0, dtype=F64, **kwargs):
    torch.manual_seed(seed)
    return _randomise(AnyUp(**kwargs), seed).to(dtype).eval()


def _inputs(batch, channels, image, low, seed=1, dtype=F64):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, *image, generator=generator, dtype=dtype),
            torch.randn(batch, channels, *low, generator=generator, dtype=dtype))


# ----------------------------------------------------------------------------------------
# dense reference, from the method's definition

def _rope_ref(x, freqs):
    _, dim, height, width = x.shape
    out = torch.empty_like(x)
    half = dim // 2
    for i in range(height):
        for j in range(width):
            row, col = i / max(height - 1, 1), j / max(width - 1, 1)
            angle = row * freqs[0] + col * freqs[1]
            v = x[:, :, i, j]
            rotated = torch.cat([-v[:, half:], v[:, :half]], dim=1)
            out[:, :, i, j] = v * angle.cos() + rotated * angle.sin()
    return out


def _lfu_ref(x, basis):
    """Channel c convolved with filter j is response number c * n + j; the responses,
    numbered so, fill an (n, C) grid row by row; softmax down its columns, mean along rows."""
    batch, channels, height, width = x.shape
    n, _, k, _ = basis.shape
    p = k // 2
    padded = F.pad(x, (p, p, p, p))
    inside = F.pad(torch.ones(height, width, dtype=x.dtype), (p, p, p, p))
    responses = torch.empty(batch, channels * n, height, width, dtype=x.dtype)
    for c in range(channels):
        for j in range(n):
            for i in range(height):
                for jj in range(width):
                    patch = padded[:, c, i:i + k, jj:jj + k]
                    responses[:, c * n + j, i, jj] = (patch * basis[j, 0]).sum((-2, -1)) / \
                        inside[i:i + k, jj:jj + k].sum()
    grid = torch.empty(batch, n, channels, height, width, dtype=x.dtype)
    for number in range(channels * n):
        grid[:, number // channels, number % channels] = responses[:, number]
    return grid.softmax(dim=1).mean(dim=2)


def _allowed(size, low, ratio):
    """(size, low) bool: the low-res cells query i may attend to along one axis, the bounds
    floor(clamp(p - r) * low), ceil(clamp(p + r) * low), p = (i + 1/2) / size in float32."""
    allowed = torch.zeros(size, low, dtype=torch.bool)
    for i in range(size):
        if ratio <= 0:
            allowed[i] = True
            continue
        p = (torch.tensor(i, dtype=torch.float32) + 0.5) / size
        first = int(math.floor(float((p - ratio).clamp(0, 1) * low)))
        end = int(math.ceil(float((p + ratio).clamp(0, 1) * low)))
        allowed[i, first:end] = True
    return allowed


def _attention_ref(queries, keys, values, q_weight, q_bias, k_weight, k_bias, heads, ratio):
    """Dense masked attention of every output pixel over all low-res cells, head-averaged
    probabilities applied to the raw values."""
    batch, dim, out_h, out_w = queries.shape
    low_h, low_w = keys.shape[-2:]
    q = queries.flatten(2).transpose(1, 2) @ q_weight.t() + q_bias  # (B, HoWo, D)
    k = keys.flatten(2).transpose(1, 2) @ k_weight.t() + k_bias     # (B, hw, D)
    hd = dim // heads
    q = q.view(batch, -1, heads, hd).transpose(1, 2)
    k = k.view(batch, -1, heads, hd).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)                # (B, heads, HoWo, hw)
    rows, cols = _allowed(out_h, low_h, ratio), _allowed(out_w, low_w, ratio)
    mask = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(out_h * out_w, -1)
    probs = scores.masked_fill(~mask, float('-inf')).softmax(-1).mean(1)
    out = probs @ values.flatten(2).transpose(1, 2)
    return out.transpose(1, 2).reshape(batch, -1, out_h, out_w)


def _rms(x, weight):
    eps = torch.finfo(x.dtype).eps
    return x / torch.sqrt(x.pow(2).mean(1, keepdim=True) + eps) * weight[:, None, None]


def _anyup_ref(model, image, features, out_size, k_bias=None):
    enc = _rope_ref(model.image_encoder(image), model.rope.freqs)
    queries = F.adaptive_avg_pool2d(model.query_encoder(enc), out_size)
    keys = F.adaptive_avg_pool2d(model.key_encoder(enc), features.shape[-2:])
    lfu = _lfu_ref(F.normalize(features, dim=1), model.key_features_encoder[0].basis)
    keys = model.aggregation(torch.cat([keys, model.key_features_encoder[1:](lfu)], 1))
    attn = model.cross_decode.cross_attn
    queries = _rms(model.cross_decode.conv2d(queries), attn.norm_q.weight)
    keys = _rms(keys, attn.norm_k.weight)
    if k_bias is None:
        k_bias = torch.zeros(model.qk_dim, dtype=keys.dtype)
    return _attention_ref(queries, keys, features, attn.q_proj.weight, attn.q_proj.bias,
                          attn.k_proj.weight, k_bias, model.num_heads, model.window_ratio)


# (batch, C, image, features, output)
CASES = [
    (1, 5, (12, 12), (4, 4), (12, 12)),    # integer ratio 3
    (2, 3, (10, 14), (3, 5), (7, 11)),     # non-square, non-integer, batch 2
    (1, 4, (9, 9), (6, 7), (4, 3)),        # output smaller than the features
    (1, 2, (8, 6), (2, 3), (5, 9)),        # maps smaller than any window
]


@pytest.mark.parametrize('ratio', [0.1, 0.3, 0.0, 1.5])
@pytest.mark.parametrize('case', CASES)
def test_matches_dense_reference(case, ratio):
    batch, channels, image_size, low, out = case
    model = _model(window_ratio=ratio, **SMALL)
    image, features = _inputs(batch, channels, image_size, low)
    with torch.no_grad():
        ours = model(image, features, out)
        ref = _anyup_ref(model, image, features, out)
    assert ours.shape == (batch, channels, *out)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_windows_are_local():
    """With window_ratio 0.1 an output pixel ignores values far from it; globally it does not.
    (Through the whole module every key depends on every feature: the GroupNorms.)"""
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(1, 16, 20, 20, generator=generator, dtype=F64)
    keys = torch.randn(1, 16, 10, 10, generator=generator, dtype=F64)
    values = torch.randn(1, 2, 10, 10, generator=generator, dtype=F64)
    changed = values.clone()
    changed[..., 9, 9] += 10.0
    for ratio in (0.1, 0.0):
        model = _model(window_ratio=ratio, **SMALL)
        with torch.no_grad():
            diff = (model._attend(queries, keys, changed) -
                    model._attend(queries, keys, values)).abs()
        near, far = diff[..., 19, 19].max().item(), diff[..., :16, :16].max().item()
        assert near > 0
        assert (far > 0) if ratio == 0.0 else (far == 0)
        # pixel 16 is centred at 0.825, its window ends at ceil(0.925 * 10) = 10 > cell 9
        assert (diff[..., 15, 15].max().item() == 0) == (ratio > 0)
        assert diff[..., 16, 16].max().item() > 0


# ----------------------------------------------------------------------------------------
# the published checkpoint layout

def _resblocks(prefix, first_in=128):
    keys = {}
    for i, cin in ((1, first_in), (2, 128)):
        keys[f'{prefix}.{i}.block.0.weight'] = (cin,)
        keys[f'{prefix}.{i}.block.0.bias'] = (cin,)
        keys[f'{prefix}.{i}.block.2.weight'] = (128, cin, 1, 1)
        keys[f'{prefix}.{i}.block.3.weight'] = (128,)
        keys[f'{prefix}.{i}.block.3.bias'] = (128,)
        keys[f'{prefix}.{i}.block.5.weight'] = (128, 128, 1, 1)
    return keys


def _published_layout():
    """Key -> shape of anyup_paper.pth, from the authors' module definitions (73 tensors)."""
    keys = {'image_encoder.0.weight': (128, 3, 1, 1), 'key_encoder.0.weight': (128, 128, 1, 1),
            'query_encoder.0.weight': (128, 128, 1, 1),
            'key_features_encoder.0.basis': (128, 1, 5, 5),
            'aggregation.0.weight': (128, 256, 3, 3),
            'cross_decode.conv2d.weight': (128, 128, 3, 3),
            'cross_decode.cross_attn.norm_q.weight': (128,),
            'cross_decode.cross_attn.norm_k.weight': (128,),
            'cross_decode.cross_attn.attention.in_proj_weight': (384, 128),
            'cross_decode.cross_attn.attention.in_proj_bias': (384,),
            'cross_decode.cross_attn.attention.out_proj.weight': (128, 128),
            'cross_decode.cross_attn.attention.out_proj.bias': (128,),
            'rope.freqs': (2, 128)}
    for prefix in ('image_encoder', 'key_encoder', 'query_encoder', 'key_features_encoder',
                   'aggregation'):
        keys.update(_resblocks(prefix))
    return keys


def _published(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {key: 0.2 * torch.randn(shape, generator=generator)
            for key, shape in _published_layout().items()}


def test_parameter_count():
    # published 878,080 less the value rows of in_proj (16,512), out_proj (16,512) and the
    # key bias (128), which never change the output
    assert sum(p.numel() for p in AnyUp().parameters()) == 844_928
    assert sum(math.prod(s) for s in _published_layout().values()) == 878_080
    assert len(_published_layout()) == 73


def test_published_checkpoint_converts_and_matches_multihead_attention():
    published = _published()
    converted = convert_published_anyup(published)
    model = AnyUp()
    load_state_dict_strict(model, converted, 'converted anyup_paper.pth')
    model = model.to(F64).eval()
    in_w = published['cross_decode.cross_attn.attention.in_proj_weight']
    assert torch.equal(model.cross_decode.cross_attn.k_proj.weight.float(), in_w[128:256])
    # the attention step against torch's own nn.MultiheadAttention holding the published
    # in_proj (key bias and value rows included) and out_proj: only its weights are used
    mha = nn.MultiheadAttention(128, 4, batch_first=True).to(F64)
    mha.load_state_dict({k.rsplit('attention.', 1)[1]: v.to(F64) for k, v in published.items()
                         if '.attention.' in k})
    image, features = _inputs(2, 3, (10, 12), (3, 4))
    out_size = (7, 9)
    with torch.no_grad():
        ours = model(image, features, out_size)
        ref = _anyup_ref(model, image, features, out_size,
                         k_bias=published['cross_decode.cross_attn.attention.in_proj_bias']
                         [128:256].to(F64))
        # the same queries and keys into nn.MultiheadAttention
        enc = _rope_ref(model.image_encoder(image), model.rope.freqs)
        q = F.adaptive_avg_pool2d(model.query_encoder(enc), out_size)
        k = F.adaptive_avg_pool2d(model.key_encoder(enc), (3, 4))
        lfu = _lfu_ref(F.normalize(features, dim=1), model.key_features_encoder[0].basis)
        k = model.aggregation(torch.cat([k, model.key_features_encoder[1:](lfu)], 1))
        attn = model.cross_decode.cross_attn
        q = _rms(model.cross_decode.conv2d(q), attn.norm_q.weight).flatten(2).transpose(1, 2)
        k = _rms(k, attn.norm_k.weight).flatten(2).transpose(1, 2)
        rows, cols = torch.meshgrid(torch.arange(7), torch.arange(9), indexing='ij')
        mask = ~(_allowed(7, 3, 0.1)[:, None, :, None] &
                 _allowed(9, 4, 0.1)[None, :, None, :]).reshape(63, 12)
        _, weights = mha(q, k, k, attn_mask=mask, average_attn_weights=True)
        mha_out = (weights @ features.flatten(2).transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours, mha_out.reshape(ours.shape), rtol=1e-10, atol=1e-10)


def test_converter_refuses_other_files():
    published = _published()
    for bad, words in [
        (AnyUp().state_dict(), ['not an AnyUp checkpoint', 'q_proj.weight', 'in_proj_weight']),
        ({'image_encoder.encoder.0.weight': torch.zeros(128, 3, 1, 1),
          'image_encoder.rope.periods': torch.zeros(16)}, ['not an AnyUp checkpoint',
                                                           'image_encoder.rope.periods']),
        ({k: v for k, v in published.items() if k != 'rope.freqs'},
         ['1 missing keys', 'rope.freqs']),
        ({**published, 'key_features_encoder.0.basis': torch.zeros(128, 1, 3, 3)},
         ['mis-shaped', 'key_features_encoder.0.basis', '(128, 1, 3, 3)']),
        ({**published, 'rope.freqs': [0.0]}, ['rope.freqs', 'a list']),
        ({'anyup': published, 'epoch': 3}, ["pass its ['anyup']"]),
    ]:
        with pytest.raises(ValueError) as info:
            convert_published_anyup(bad)
        for word in words:
            assert word in str(info.value)
    with pytest.raises(ValueError, match='not an AnyUp checkpoint'):
        convert_published_anyup(torch.zeros(3))


# ----------------------------------------------------------------------------------------
# training, dtypes, arguments

def test_gradients_reach_every_parameter_and_the_features():
    model = _model(**SMALL).train()
    image, features = _inputs(2, 3, (10, 12), (3, 4))
    features.requires_grad_(True)
    out = model(image, features, (7, 9))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in list(model.named_parameters()) + [('features', features)]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 1e-8, name


def test_default_output_size_and_int_size():
    model = _model(**SMALL)
    image, features = _inputs(1, 3, (9, 13), (3, 4))
    with torch.no_grad():
        assert model(image, features).shape == (1, 3, 9, 13)
        assert model(image, features, 5).shape == (1, 3, 5, 5)
        assert model(image, features, torch.Size([6, 4])).shape == (1, 3, 6, 4)


def test_deterministic():
    model = _model(dtype=torch.float32, **SMALL)
    image, features = _inputs(2, 3, (10, 12), (3, 4), dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(model(image, features, (7, 9)), model(image, features, (7, 9)))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_features_and_autocast(dtype):
    model = _model(dtype=torch.float32, **SMALL)
    image, features = _inputs(2, 3, (10, 12), (3, 4), dtype=torch.float32)
    with torch.no_grad():
        ref = model(image, features, (7, 9))
        half = model(image, features.to(dtype), (7, 9))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            auto = model(image, features.to(dtype), (7, 9))
    for out in (half, auto):
        assert out.dtype == dtype and torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


@pytest.mark.parametrize('kwargs, name', [
    (dict(qk_dim=12), 'qk_dim'), (dict(qk_dim=16, num_heads=3), 'qk_dim'),
    (dict(num_heads=0), 'num_heads'), (dict(kernel_size=2), 'kernel_size'),
    (dict(kernel_size_lfu=4), 'kernel_size_lfu'), (dict(window_ratio='0.1'), 'window_ratio'),
    (dict(window_ratio=float('nan')), 'window_ratio'), (dict(lfu_dim=4), 'lfu_dim'),
    (dict(input_dim=0), 'input_dim'), (dict(use_natten=True), 'use_natten'),
])
def test_bad_constructor_arguments(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        AnyUp(**kwargs)


def test_bad_forward_arguments():
    model = _model(dtype=torch.float32, **SMALL)
    image, features = _inputs(2, 3, (8, 8), (2, 2), dtype=torch.float32)
    for args, name in [
        ((image[0], features), 'image'), ((image[:, :2], features), 'image'),
        ((image, features[:1]), 'batch size'), ((image, features[0]), 'features'),
        ((image, features.long()), 'features'), ((image, features, (0, 4)), 'output_size'),
        ((image, features, (2.5, 3)), 'output_size'), ((image, features, 'big'), 'output_size'),
        ((image, features.to('meta')), 'features'),
        ((image[..., :0], features), 'image'), ((image, features[..., :1]), '2 x 2'),
    ]:
        with pytest.raises(ValueError, match=name):
            model(*args)
    with pytest.raises(ValueError, match='image'):
        AnyUp(kernel_size=5, **SMALL)(image[..., :2, :2], features)
