"""Swapping the upsampler in mmseg's UPerNet, FPN and DeepLabV3+, and image-guided output
upsampling for any decode head (GuidedEncoderDecoder's output_upsampler)."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ImageSpy
from mmengine.config import Config, ConfigDict
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.models.decode_heads import DepthwiseSeparableASPPHead, PSPHead, UPerHead
from mmseg.models.necks import FPN
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import featup_mmseg.plugin  # noqa: F401
from featup_mmseg.datasets.synthetic_shapes import _draw_sample
from featup_mmseg.layers import JBUStage
from featup_mmseg.models import (FeatUpDepthwiseSeparableASPPHead, FeatUpFPN, FeatUpUPerHead,
                                 GuidedEncoderDecoder, ImageGuidedOutputUpsampler)

ROOT = Path(__file__).resolve().parents[1]
init_default_scope('mmseg')

BN = dict(type='BN', requires_grad=True)
CHANNELS = (8, 16, 24, 32)


def _levels(size, batch=2, channels=CHANNELS):
    """Backbone-like levels of strides 4..32 for a size x size image (ceil, as mmseg's)."""
    return [torch.randn(batch, c, -(-size // 2**(i + 2)), -(-size // 2**(i + 2)))
            for i, c in enumerate(channels)]


def _same_weights(head, reference):
    """Loads reference's state_dict into head strictly (same parameter names)."""
    state = reference.state_dict()
    missing, unexpected = head.load_state_dict(state, strict=False)
    assert not unexpected
    assert all('_stages' in key or 'c1_upsampler' in key for key in missing)
    return head.eval(), reference.eval()


# ----------------------------------------------------------------------------------------
# the bilinear (and nearest) baselines are mmseg's modules

UPER = dict(in_channels=list(CHANNELS), in_index=[0, 1, 2, 3], channels=16, num_classes=5,
            pool_scales=(1, 2, 3, 6), dropout_ratio=0.1, norm_cfg=BN)


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('size', [128, 130])  # 130: odd levels 33, 17, 9, 5
def test_bilinear_uper_head_is_mmseg_uper_head(size, align_corners):
    torch.manual_seed(0)
    reference = UPerHead(**UPER, align_corners=align_corners)
    head = FeatUpUPerHead(upsampler=dict(type='bilinear'), **UPER, align_corners=align_corners)
    assert set(head.state_dict()) == set(reference.state_dict())
    head, reference = _same_weights(head, reference)
    inputs = _levels(size)
    torch.testing.assert_close(head(inputs), reference(inputs), rtol=0, atol=0)


@pytest.mark.parametrize('upsampler, upsample_cfg', [
    ('nearest', dict(mode='nearest')),  # mmseg's default
    ('bilinear', dict(mode='bilinear')),
])
@pytest.mark.parametrize('size', [128, 130])
def test_interpolating_fpn_is_mmseg_fpn(upsampler, upsample_cfg, size):
    cfg = dict(in_channels=list(CHANNELS), out_channels=16, num_outs=5, norm_cfg=BN,
               add_extra_convs='on_output')
    torch.manual_seed(0)
    reference = FPN(**cfg, upsample_cfg=upsample_cfg)
    neck = FeatUpFPN(**cfg, upsampler=dict(type=upsampler))
    assert set(neck.state_dict()) == set(reference.state_dict())
    neck, reference = _same_weights(neck, reference)
    inputs = _levels(size)
    for out, expected in zip(neck(inputs), reference(inputs), strict=True):
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


ASPP = dict(in_channels=32, in_index=3, channels=16, c1_in_channels=8, c1_channels=6,
            dilations=(1, 2, 3, 4), num_classes=5, norm_cfg=BN)


@pytest.mark.parametrize('size', [128, 130])
def test_bilinear_sep_aspp_head_is_mmseg_sep_aspp_head(size):
    torch.manual_seed(0)
    reference = DepthwiseSeparableASPPHead(**ASPP)
    head = FeatUpDepthwiseSeparableASPPHead(upsampler=dict(type='bilinear'), **ASPP)
    assert set(head.state_dict()) == set(reference.state_dict())
    head, reference = _same_weights(head, reference)
    # DeepLabV3+: c1 at 1/4, the ASPP input at 1/8 (a dilated backbone)
    inputs = _levels(size)
    inputs[3] = torch.randn(2, 32, *inputs[1].shape[-2:])
    torch.testing.assert_close(head(inputs), reference(inputs), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------
# guided stages: where they are and what guides them

class _StageSpy:
    """Records (source size, guidance) of every JBUStage call."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = JBUStage.forward

        def forward(stage, source, guidance, products=None):
            self.calls.append((tuple(source.shape[-2:]), guidance))
            return original(stage, source, guidance, products)

        monkeypatch.setattr(JBUStage, 'forward', forward)


def test_uper_head_guides_top_down_by_laterals_and_climbs_by_fpn_outputs(monkeypatch):
    head = FeatUpUPerHead(**UPER).eval()
    assert len(head.top_down_stages) == 3
    assert [len(stages) for stages in head.guided_stages] == [1, 2, 3]
    laterals, fpn_outs = [], []
    for conv in head.lateral_convs:
        conv.register_forward_hook(lambda m, i, out: laterals.append(out))
    for conv in head.fpn_convs:
        conv.register_forward_hook(lambda m, i, out: fpn_outs.append(out))
    spy = _StageSpy(monkeypatch)
    with torch.no_grad():
        out = head(_levels(130))
    assert out.shape == (2, 5, 33, 33)
    sizes = [(33, 33), (17, 17), (9, 9), (5, 5)]
    # top-down 5 -> 9 -> 17 -> 33, each guided by the finer lateral before the sum
    assert [source for source, _ in spy.calls[:3]] == sizes[:0:-1]
    assert all(g is laterals[level] for (_, g), level in zip(spy.calls[:3], (2, 1, 0)))
    # climb: each FPN output (the PPM output at the top) one level at a time, guided by
    # the FPN output of the level it reaches
    climb = spy.calls[3:]
    assert [source for source, _ in climb] == [sizes[1], sizes[2], sizes[1], sizes[3],
                                               sizes[2], sizes[1]]
    assert [next(i for i, f in enumerate(fpn_outs) if f is g) for _, g in climb] == \
        [0, 1, 0, 2, 1, 0]


def test_fpn_and_aspp_guides(monkeypatch):
    neck = FeatUpFPN(in_channels=list(CHANNELS), out_channels=16, num_outs=4).eval()
    laterals = []
    for conv in neck.lateral_convs:
        conv.register_forward_hook(lambda m, i, out: laterals.append(out))
    spy = _StageSpy(monkeypatch)
    with torch.no_grad():
        outs = neck(_levels(130))
    assert [tuple(o.shape[-2:]) for o in outs] == [(33, 33), (17, 17), (9, 9), (5, 5)]
    assert [g is laterals[level] for (_, g), level in zip(spy.calls, (2, 1, 0))] == [True] * 3

    head = FeatUpDepthwiseSeparableASPPHead(**ASPP).eval()
    c1 = []
    head.c1_bottleneck.register_forward_hook(lambda m, i, out: c1.append(out))
    spy.calls.clear()
    inputs = _levels(130)
    inputs[3] = torch.randn(2, 32, 17, 17)
    with torch.no_grad():
        assert head(inputs).shape == (2, 5, 33, 33)
    assert len(spy.calls) == 1 and spy.calls[0][0] == (17, 17) and spy.calls[0][1] is c1[0]
    assert head.c1_upsampler.guidance_dim == 6


# ----------------------------------------------------------------------------------------
# small segmentors of every family train on the synthetic shapes

def _resnet(dilated=False):
    strides, dilations = ((1, 2, 1, 1), (1, 1, 2, 4)) if dilated else ((1, 2, 2, 2),
                                                                       (1, 1, 1, 1))
    return dict(type='ResNetV1c', depth=18, stem_channels=8, base_channels=8,
                strides=strides, dilations=dilations, norm_cfg=BN, contract_dilation=True)


def _head_kwargs(**kwargs):
    return dict(num_classes=5, norm_cfg=BN, dropout_ratio=0.0, align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0), **kwargs)


RESNET_CHANNELS = [8, 16, 32, 64]
FAMILIES = {
    'upernet': dict(backbone=_resnet(), decode_head=dict(
        type='FeatUpUPerHead', in_channels=RESNET_CHANNELS, in_index=[0, 1, 2, 3],
        channels=16, pool_scales=(1, 2, 3, 6), **_head_kwargs())),
    'sem_fpn': dict(backbone=_resnet(), neck=dict(
        type='FeatUpFPN', in_channels=RESNET_CHANNELS, out_channels=16, num_outs=4),
        decode_head=dict(type='FPNHead', in_channels=[16] * 4, in_index=[0, 1, 2, 3],
                         feature_strides=[4, 8, 16, 32], channels=16, **_head_kwargs())),
    'deeplabv3plus': dict(backbone=_resnet(dilated=True), decode_head=dict(
        type='FeatUpDepthwiseSeparableASPPHead', in_channels=64, in_index=3, channels=16,
        dilations=(1, 2, 3, 4), c1_in_channels=8, c1_channels=8, **_head_kwargs())),
    'pspnet_output': dict(
        backbone=_resnet(dilated=True), output_upsampler=dict(out_stride=1, num_stages=3),
        decode_head=dict(type='PSPHead', in_channels=64, in_index=3, channels=16,
                         pool_scales=(1, 2, 3, 6), **_head_kwargs())),
    'upernet_output': dict(
        backbone=_resnet(), output_upsampler=dict(out_stride=2, num_stages=1),
        decode_head=dict(type='FeatUpUPerHead', in_channels=RESNET_CHANNELS,
                         in_index=[0, 1, 2, 3], channels=16, **_head_kwargs())),
}


def _segmentor(family, size=64, test_cfg=None, **overrides):
    cfg = dict(
        type='GuidedEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               size=(size, size)),
        test_cfg=test_cfg or dict(mode='whole'), **copy.deepcopy(FAMILIES[family]))
    cfg.update(overrides)  # whole entries replaced, not merged
    return MODELS.build(ConfigDict(cfg))


def _synthetic_batch(size=64, batch=4, seed=0):
    """A batch of the synthetic shapes as the data loader gives it (uint8 BGR images,
    labels 0..4 after reduce_zero_label)."""
    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    for _ in range(batch):
        image, label = _draw_sample(rng, size)
        inputs.append(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(label.astype(np.int64) - 1)[None])
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_every_family_trains_on_synthetic_shapes(family):
    torch.manual_seed(0)
    model = _segmentor(family)
    model.init_weights()
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=5e-3))
    data = _synthetic_batch()
    stages = [m for m in model.modules() if isinstance(m, JBUStage)]
    initial = [s.fixup_proj[0].weight.clone() for s in stages]
    losses = [model.train_step(data, optim)['loss'].item() for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    # every guided stage is in the graph and learns
    assert stages and all(not torch.equal(s.fixup_proj[0].weight, w)
                          for s, w in zip(stages, initial))


# ----------------------------------------------------------------------------------------
# the image-guided output upsampler

@pytest.mark.parametrize('test_cfg, crops', [
    (dict(mode='whole'), [(64, 64)]),
    (dict(mode='slide', crop_size=(48, 48), stride=(16, 16)), [(48, 48)] * 4),
])
def test_output_upsampler_gets_the_image_in_every_mode(monkeypatch, test_cfg, crops):
    spy = ImageSpy(monkeypatch, ImageGuidedOutputUpsampler)
    model = _segmentor('pspnet_output', test_cfg=test_cfg)
    assert isinstance(model.decode_head, PSPHead)
    assert not any(k.startswith('decode_head.output') for k in model.state_dict())
    data = model.data_preprocessor(_synthetic_batch(batch=2), True)
    inputs, samples = data['inputs'], data['data_samples']

    losses = model(inputs, samples, mode='loss')
    losses['decode.loss_ce'].backward()
    assert model.output_upsampler.upsampler.up1.range_proj[0].weight.grad is not None
    assert spy.images[-1] is inputs

    logits = model(inputs, mode='tensor')
    assert logits.shape == (2, 5, 64, 64)  # classified at full resolution
    assert spy.images[-1] is inputs

    spy.images.clear()
    model.eval()
    with torch.no_grad():
        predictions = model(inputs, samples, mode='predict')
    assert [tuple(i.shape[-2:]) for i in spy.images] == crops
    assert predictions[0].pred_sem_seg.data.shape == (1, 64, 64)
    assert predictions[0].seg_logits.data.shape == (5, 64, 64)


def test_output_upsampler_classifies_the_upsampled_features():
    model = _segmentor('pspnet_output').eval()
    inputs = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        x = model.extract_feat(inputs)
        head = model.decode_head
        psp_outs = torch.cat([x[3], *head.psp_modules(x[3])], dim=1)
        upsampled = model.output_upsampler(head.bottleneck(psp_outs), inputs)
        # conv_seg's own weights, without its forward hook
        expected = torch.nn.functional.conv2d(upsampled, head.conv_seg.weight,
                                              head.conv_seg.bias)
        torch.testing.assert_close(model(inputs, mode='tensor'), expected)


def test_output_upsampler_loads_featup_weights_where_channels_match(tmp_path):
    from helpers import official_featup_checkpoint
    from featup_mmseg.layers import split_featup_state_dict
    checkpoint = official_featup_checkpoint(dim=16, use_norm=False)  # for 16 channels
    upsampler = split_featup_state_dict(checkpoint['state_dict'], use_norm=False).upsampler
    path = tmp_path / 'jbu.pth'
    torch.save({'state_dict': {f'upsampler.{k}': v for k, v in upsampler.items()}}, path)
    model = _segmentor('pspnet_output', output_upsampler=dict(
        num_stages=4, init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    model.init_weights()
    torch.testing.assert_close(model.output_upsampler.upsampler.up1.range_proj[0].weight,
                               upsampler['up1.range_proj.0.weight'])
    wrong = _segmentor('pspnet_output', output_upsampler=dict(
        num_stages=3, init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    with pytest.raises(ValueError, match=r'unexpected keys:\n  upsampler.up4'):
        wrong.init_weights()


# ----------------------------------------------------------------------------------------
# wrong combinations name the fix

class _NoClassifierCall(PSPHead):
    def forward(self, inputs):
        return torch.zeros(inputs[0].shape[0], self.out_channels, 8, 8)


MODELS.register_module(module=_NoClassifierCall, force=True)


@pytest.mark.parametrize('build, message', [
    (lambda: _segmentor('pspnet_output', type='EncoderDecoder'),
     r"unexpected keyword argument 'output_upsampler'"),
    (lambda: _segmentor('pspnet_output', output_upsampler=dict(in_channels=32)),
     r"output_upsampler.in_channels must be the decode head's channels \(16\)"),
    (lambda: _segmentor('pspnet_output', output_upsampler=dict(out_stride=1, scale_factor=2)),
     r'ImageGuidedOutputUpsampler: give one of out_stride, output_size and scale_factor'),
    (lambda: MODELS.build(dict(type='FeatUpDepthwiseSeparableASPPHead',
                               **{**ASPP, 'c1_in_channels': 0})),
     r'guided by the low-level branch, which c1_in_channels=0 removes'),
    (lambda: FeatUpFPN(in_channels=[8, 16], out_channels=8, num_outs=2,
                       upsample_cfg=dict(mode='bilinear')),
     r"upsample_cfg=.* is replaced by upsampler: use upsampler=dict\(type='nearest'\)"),
    (lambda: FeatUpUPerHead(upsampler=dict(type='bilinear', scale_factor=2), **UPER),
     r"upsampler=dict\(type='bilinear'\) takes no other keys"),
    (lambda: FeatUpUPerHead(upsampler=dict(type='NoSuchUpsampler'), **UPER),
     r"FeatUpUPerHead: unknown upsampler type 'NoSuchUpsampler'"),
])
def test_wrong_combinations_fail_at_build_time(build, message):
    with pytest.raises(Exception, match=message):
        build()


def test_wrong_combinations_fail_at_the_first_call():
    model = _segmentor('pspnet_output', decode_head=dict(FAMILIES['pspnet_output']['decode_head'],
                                                        type='_NoClassifierCall')).eval()
    with pytest.raises(RuntimeError, match='did not classify through conv_seg, so '
                       'output_upsampler was never applied'):
        model(torch.randn(1, 3, 64, 64), mode='tensor')

    model = _segmentor('pspnet_output').eval()
    with pytest.raises(RuntimeError, match='decode head was called outside the segmentor'):
        model.decode_head(model.extract_feat(torch.randn(1, 3, 64, 64)))

    model = _segmentor('upernet', size=32)
    data = model.data_preprocessor(_synthetic_batch(size=32, batch=2), True)
    # the top-down step into the 1/16 level needs that level at least 4 x 4
    with pytest.raises(ValueError, match=r'FeatUpUPerHead with radius-3 JBU stages needs input '
                       r'images of at least 49 x 49 px, got 32 x 32'):
        model(data['inputs'], data['data_samples'], mode='loss')
    model = _segmentor('upernet', size=49)
    data = model.data_preprocessor(_synthetic_batch(size=49, batch=2), True)
    assert torch.isfinite(model(data['inputs'], data['data_samples'], mode='loss')['decode.loss_ce'])


# ----------------------------------------------------------------------------------------
# ADE20K configs

FAMILY_CONFIGS = {
    'featup_upernet/upernet_r50_{}_4xb4-160k_ade20k-512x512.py': FeatUpUPerHead,
    'featup_upernet/upernet_swin-t_{}_8xb2-160k_ade20k-512x512.py': FeatUpUPerHead,
    'featup_sem_fpn/fpn_r50_{}_4xb4-160k_ade20k-512x512.py': FeatUpFPN,
    'featup_deeplabv3plus/deeplabv3plus_r50-d8_{}_4xb4-160k_ade20k-512x512.py':
        FeatUpDepthwiseSeparableASPPHead,
    'featup_pspnet/pspnet_r50-d8_{}_4xb4-160k_ade20k-512x512.py': ImageGuidedOutputUpsampler,
}


# the baseline twin of each family: what mmseg's own config computes (semantic FPN
# upsamples with 'nearest'; the others resize bilinearly)
BASELINE_VARIANT = {'featup_sem_fpn/fpn_r50_{}_4xb4-160k_ade20k-512x512.py': 'nearest'}


@pytest.mark.parametrize('pattern', sorted(FAMILY_CONFIGS))
def test_family_configs_build_with_their_baseline_twins(pattern):
    models = {}
    for variant in (BASELINE_VARIANT.get(pattern, 'bilinear'),
                    'featup-jbu-output' if 'pspnet' in pattern else 'featup-jbu'):
        cfg = Config.fromfile(ROOT / 'configs' / pattern.format(variant))
        cfg.model.backbone.init_cfg = None
        cfg.model.pop('pretrained', None)
        assert cfg.model.decode_head.num_classes == 150
        models[variant] = MODELS.build(cfg.model)
    bilinear, jbu = models.values()
    swapped = FAMILY_CONFIGS[pattern]
    assert isinstance(jbu, GuidedEncoderDecoder) or swapped is not ImageGuidedOutputUpsampler
    modules = [m for m in jbu.modules() if isinstance(m, swapped)]
    assert modules, f'{pattern}: no {swapped.__name__}'
    # the twins share every parameter name and shape but the guided stages'
    extra = {k for k in jbu.state_dict()} - set(bilinear.state_dict())
    assert extra and all('_stages.' in k or 'c1_upsampler.' in k or
                         k.startswith('output_upsampler.') for k in extra)
    assert {k: v.shape for k, v in bilinear.state_dict().items()} == \
        {k: v.shape for k, v in jbu.state_dict().items() if k not in extra}
    assert not any(isinstance(m, JBUStage) for m in bilinear.modules())


@pytest.mark.parametrize('variant, exact', [('nearest', True), ('bilinear', False)])
def test_semantic_fpn_baseline_config_is_mmsegs_semantic_fpn(variant, exact, tmp_path):
    """The nearest twin computes mmseg's own semantic FPN config bit for bit, with the same
    state_dict; the bilinear variant does not (it is labelled as a variant)."""
    mmseg_config = tmp_path / 'mmseg_fpn.py'
    mmseg_config.write_text("_base_ = ['mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py']")
    models = []
    for path in (mmseg_config,
                 ROOT / f'configs/featup_sem_fpn/fpn_r50_{variant}_4xb4-160k_ade20k-512x512.py'):
        cfg = Config.fromfile(path)
        cfg.model.backbone.update(init_cfg=None, depth=18, in_channels=3)
        cfg.model.neck.in_channels = [64, 128, 256, 512]
        cfg.model.pop('pretrained', None)
        cfg.model.data_preprocessor.pop('size', None)
        torch.manual_seed(0)
        models.append(MODELS.build(cfg.model).eval())
    mmseg_fpn, ours = models
    assert type(mmseg_fpn.neck).__name__ == 'FPN' and isinstance(ours.neck, FeatUpFPN)
    ours.load_state_dict(mmseg_fpn.state_dict(), strict=True)
    inputs = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, actual = (m(inputs, mode='tensor') for m in (mmseg_fpn, ours))
    assert torch.equal(actual, expected) == exact


def test_output_upsampler_composes_with_the_jbu_neck():
    vit = dict(type='VisionTransformer', img_size=(64, 64), patch_size=16, embed_dims=32,
               num_layers=2, num_heads=2, out_indices=(1, ), final_norm=True)
    model = _segmentor(
        'pspnet_output', backbone=vit, neck=dict(type='JBUNeck', in_channels=32, out_stride=8,
                                                  num_stages=1),
        decode_head=dict(type='FCNHead', in_channels=32, in_index=-1, channels=16,
                         num_convs=1, concat_input=False, **_head_kwargs()),
        output_upsampler=dict(out_stride=2, num_stages=2))
    data = model.data_preprocessor(_synthetic_batch(batch=2), True)
    losses = model(data['inputs'], data['data_samples'], mode='loss')
    losses['decode.loss_ce'].backward()
    assert model.neck.upsampler.up1.range_proj[0].weight.grad is not None
    assert model.output_upsampler.upsampler.up2.range_proj[0].weight.grad is not None
    # 1/16 -> (neck) 1/8 -> (head) -> (output upsampler) 1/2
    assert model(data['inputs'], mode='tensor').shape == (2, 5, 32, 32)
