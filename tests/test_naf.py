"""NAF feature upsampler (layers/attention_upsamplers/naf.py): shapes, a dense float64
reference written from the method's definition, gradients, the published state-dict
layout, argument checks, low precision, determinism."""
import math

import pytest
import torch
import torch.nn.functional as F

from featup_mmseg.layers.attention_upsamplers.naf import NAF, convert_published_naf
from featup_mmseg.layers.featup_checkpoint import load_state_dict_strict

SMALL = dict(dim=32, heads_attn=2, heads_rope=2, kernel_size=3, img_layers=1)


def small(**kw):
    torch.manual_seed(0)
    return NAF(**{**SMALL, **kw}).eval()


def randomise_norms(model):
    """GroupNorm affines away from 1/0 so the reference checks that they are used."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'norm' in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def inputs(b=2, c=4, img=(16, 20), feat=(5, 7), dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, *img, generator=gen).to(dtype),
            torch.randn(b, c, *feat, generator=gen).to(dtype))


# ---------------------------------------------------------------------------------------
# dense reference from the method's definition

def ref_rope(x, periods, heads):
    """Pairs (i, i + D/2) of each head as complex numbers rotated by exp(i * angle); angle
    2 pi * coord / period, rows for i < D/4, columns for D/4 <= i < D/2."""
    b, c, h, w = x.shape
    d = c // heads
    q = d // 4
    row = (torch.arange(h, dtype=x.dtype) + 0.5) / h * 2 - 1
    col = (torch.arange(w, dtype=x.dtype) + 0.5) / w * 2 - 1
    ang = torch.empty(d // 2, h, w, dtype=x.dtype)
    for i in range(q):
        ang[i] = 2 * math.pi * row[:, None].expand(h, w) / periods[i]
        ang[q + i] = 2 * math.pi * col[None, :].expand(h, w) / periods[i]
    xh = x.reshape(b, heads, d, h, w)
    z = torch.complex(xh[:, :, :d // 2], xh[:, :, d // 2:])
    z = z * torch.polar(torch.ones_like(ang), ang)
    return torch.cat([z.real, z.imag], dim=2).reshape(b, c, h, w)


def ref_window(length_out, length_in, k):
    """(length_out, length_in) bool: which low-res cells each output row/column may read."""
    allowed = torch.zeros(length_out, length_in, dtype=torch.bool)
    for y in range(length_out):
        c = (2 * y + 1) * length_in // (2 * length_out)  # nearest-exact cell
        if length_in <= k:
            allowed[y] = True  # a map shorter than the window: the whole axis
        else:
            s = min(max(c - k // 2, 0), length_in - k)
            allowed[y, s:s + k] = True
    return allowed


def ref_branch(model, branch, image):
    """stem conv, then per block GN -> SiLU -> conv -> GN -> SiLU -> conv (no skip); convs
    with reflect padding, from the named parameters."""
    p = {k[len(f'image_encoder.{branch}.'):]: v for k, v in model.state_dict().items()
         if k.startswith(f'image_encoder.{branch}.')}

    def conv(x, name):
        w = p[name + '.weight']
        pad = w.shape[-1] // 2
        return F.conv2d(F.pad(x, (pad,) * 4, mode='reflect') if pad else x, w, p[name + '.bias'])

    x = conv(image, '0')
    i = 1
    while f'{i}.conv1.weight' in p:
        for j in (1, 2):
            x = F.group_norm(x, 8, p[f'{i}.norm{j}.weight'], p[f'{i}.norm{j}.bias'])
            x = conv(F.silu(x), f'{i}.conv{j}')
        i += 1
    return x


def ref_naf(model, image, feats, out_size):
    enc = model.image_encoder
    ho, wo = out_size
    H, W = image.shape[-2:]
    if H > 4 * ho or W > 4 * wo:
        image = F.interpolate(image, size=(min(H, 4 * ho, 4 * wo), min(W, 4 * wo, 4 * ho)),
                              mode='bilinear', align_corners=False)
    x = torch.cat([ref_branch(model, 'encoder', image),
                   ref_branch(model, 'sem_encoder', image)], 1)
    x = F.adaptive_avg_pool2d(x, out_size)
    x = ref_rope(x, enc.rope.periods.double(), enc.rope.heads)
    b, c, h, w = feats.shape
    n = model.heads_attn
    keys = F.adaptive_avg_pool2d(x, (h, w))
    mask = (ref_window(ho, h, model.kernel_size)[:, None, :, None]
            & ref_window(wo, w, model.kernel_size)[None, :, None, :]).reshape(ho * wo, h * w)
    q = x.reshape(b, n, -1, ho * wo).transpose(2, 3)               # b n HoWo d
    kk = keys.reshape(b, n, -1, h * w)                              # b n d hw
    v = feats.reshape(b, n, c // n, h * w).transpose(2, 3)          # b n hw c/n
    s = (q @ kk) * (model.dim // n) ** -0.5
    a = s.masked_fill(~mask, float('-inf')).softmax(-1)
    return (a @ v).transpose(2, 3).reshape(b, c, ho, wo)


@pytest.mark.parametrize('kernel_size,feat,out', [
    (3, (5, 5), (10, 10)),     # integer ratio: windows shifted at edges and corners
    (3, (5, 7), (12, 9)),      # non-integer ratios 2.4 and 1.29
    (5, (2, 6), (7, 13)),      # map shorter than the window along h
    (5, (3, 4), (8, 8)),       # shorter along both axes
    (3, (6, 7), (4, 5)),       # output smaller than the features
])
def test_matches_dense_reference_float64(kernel_size, feat, out):
    model = randomise_norms(small(kernel_size=kernel_size)).double()
    image, feats = inputs(feat=feat, c=6, dtype=torch.float64)
    with torch.no_grad():
        got = model(image, feats, out)
        want = ref_naf(model, image, feats, out)
    assert got.shape == (2, 6, *out) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_default_model_matches_reference_with_image_pre_resize():
    """Published sizes (dim 256, 4 + 4 heads, kernel 9, 2 layers); the image is larger than
    4x the (non-square) output, so the aspect-distorting pre-resize applies."""
    torch.manual_seed(0)
    model = randomise_norms(NAF()).double().eval()
    image, feats = inputs(b=1, c=8, img=(40, 36), feat=(10, 11), dtype=torch.float64)
    with torch.no_grad():
        got = model(image, feats, (6, 9))
        want = ref_naf(model, image, feats, (6, 9))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------
# shapes, modes, determinism

@pytest.mark.parametrize('feat,out', [((4, 6), (8, 12)), ((4, 6), (9, 13)), ((5, 3), (5, 3)),
                                      ((4, 6), 7), ((2, 1), (3, 5))])
def test_output_shapes(feat, out):
    model = small()
    image, feats = inputs(feat=feat)
    o = (out, out) if isinstance(out, int) else out
    with torch.no_grad():
        assert model(image, feats, out).shape == (2, 4, *o)
        assert model(image, feats).shape == (2, 4, 16, 20)  # default: the image size


def test_deterministic_in_eval_and_rope_rescale_only_in_training():
    model = small()
    image, feats = inputs()
    with torch.no_grad():
        a = model(image, feats, (10, 14))
        assert torch.equal(a, model(image, feats, (10, 14)))
        model.train()
        torch.manual_seed(3)
        t1 = model(image, feats, (10, 14))
        t2 = model(image, feats, (10, 14))
        torch.manual_seed(3)
        t3 = model(image, feats, (10, 14))
    assert not torch.allclose(t1, a) and not torch.allclose(t1, t2)  # a fresh draw per call
    assert torch.equal(t1, t3)                                      # from the global generator
    fixed = small(rope_rescale=None).train()
    with torch.no_grad():
        assert torch.equal(fixed(image, feats, (10, 14)), fixed.eval()(image, feats, (10, 14)))


def test_gradients_reach_every_parameter_and_the_features():
    model = randomise_norms(small()).train()
    image, feats = inputs()
    feats.requires_grad_(True)
    out = model(image, feats, (9, 13))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_features(dtype):
    model = small()
    image, feats = inputs()
    with torch.no_grad():
        want = model(image, feats, (9, 13))
        got = model(image.to(dtype), feats.to(dtype), (9, 13))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=0, atol=0.05)


def test_autocast():
    model = small()
    image, feats = inputs()
    with torch.no_grad():
        want = model(image, feats, (9, 13))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got = model(image, feats, (9, 13))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0.05)


# ---------------------------------------------------------------------------------------
# published state dict

def published_naf_state_dict(seed=0):
    """The layout of valeoai/NAF's naf_release.pth (NAF() with defaults), random values."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for branch, k in (('encoder', 1), ('sem_encoder', 3)):
        p = f'image_encoder.{branch}.'
        sd[p + '0.weight'] = torch.randn(128, 3, k, k, generator=gen)
        sd[p + '0.bias'] = torch.randn(128, generator=gen)
        for i in (1, 2):
            for norm in ('norm1', 'norm2'):
                sd[f'{p}{i}.{norm}.weight'] = torch.randn(128, generator=gen)
                sd[f'{p}{i}.{norm}.bias'] = torch.randn(128, generator=gen)
            for conv in ('conv1', 'conv2'):
                sd[f'{p}{i}.{conv}.weight'] = torch.randn(128, 128, k, k, generator=gen)
                sd[f'{p}{i}.{conv}.bias'] = torch.randn(128, generator=gen)
    sd['image_encoder.rope.periods'] = 100.0 ** (torch.arange(16.) / 16)
    return sd


def test_published_state_dict_converts_and_loads():
    published = published_naf_state_dict()
    assert len(published) == 37
    model = NAF()
    assert sum(p.numel() for p in model.parameters()) == 662528
    converted = convert_published_naf(published)
    load_state_dict_strict(model, converted, 'naf_release.pth')
    for key, value in published.items():
        assert torch.equal(model.state_dict()[key], value), key
    # Our own layout is the published one: it converts unchanged.
    assert set(convert_published_naf(NAF().state_dict())) == set(published)


def test_default_periods_are_the_published_formula():
    torch.testing.assert_close(NAF().image_encoder.rope.periods,
                               100.0 ** (2 * torch.arange(16.) / 32))


@pytest.mark.parametrize('change,expect', [
    (lambda sd: sd.pop('image_encoder.rope.periods'), 'missing keys'),
    (lambda sd: sd.update({'image_encoder.extra': torch.zeros(1)}), 'unexpected keys'),
    (lambda sd: sd.update({'image_encoder.sem_encoder.0.weight': torch.zeros(128, 3, 1, 1)}),
     'mis-shaped keys'),
])
def test_converter_refuses_wrong_files(change, expect):
    sd = published_naf_state_dict()
    change(sd)
    with pytest.raises(ValueError, match=f'not a NAF checkpoint(.|\n)*{expect}'):
        convert_published_naf(sd)


def test_converter_refuses_anyup_and_non_mappings():
    anyup = {'image_encoder.0.weight': torch.zeros(128, 3, 1, 1),
             'rope.freqs': torch.zeros(2, 128),
             'cross_decode.conv2d.weight': torch.zeros(128, 128, 3, 3)}
    with pytest.raises(ValueError, match='not a NAF checkpoint(.|\n)*37 missing keys'):
        convert_published_naf(anyup)
    with pytest.raises(ValueError, match='not a NAF checkpoint'):
        convert_published_naf([1, 2])
    with pytest.raises(ValueError, match='not a NAF checkpoint'):
        convert_published_naf({'state_dict': published_naf_state_dict()})


# ---------------------------------------------------------------------------------------
# argument checks

@pytest.mark.parametrize('kwargs,name', [
    (dict(dim=0), 'dim'), (dict(dim=40), 'dim'), (dict(heads_attn=3), 'heads_attn'),
    (dict(heads_rope=3), 'heads_rope'), (dict(kernel_size=4), 'kernel_size'),
    (dict(kernel_size=0), 'kernel_size'), (dict(rope_base=0.0), 'rope_base'),
    (dict(rope_rescale=0.5), 'rope_rescale'), (dict(img_layers=-1), 'img_layers'),
    (dict(heads_attn=True), 'heads_attn'),
])
def test_bad_constructor_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        NAF(**kwargs)


def test_bad_forward_arguments():
    model = small()
    image, feats = inputs()
    cases = [
        ((image[0], feats, (8, 8)), 'image'),
        ((image[:, :2], feats, (8, 8)), '3 \\(RGB\\) channels'),
        ((image[:1], feats, (8, 8)), 'batch size'),
        ((image, feats[:, :3], (8, 8)), 'heads_attn'),
        ((image, feats.long(), (8, 8)), 'features'),
        ((image, feats, (8, 0)), 'output_size'),
        ((image, feats, (8, 8, 8)), 'output_size'),
        ((image, feats, 2.5), 'output_size'),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            model(*args)
