"""featup_mmseg's mmseg models: SegFormer head, JBU neck, guided segmentor, configs."""
from pathlib import Path

import pytest
import torch
from helpers import ImageSpy, official_featup_checkpoint, run_tool
from mmengine.config import Config, ConfigDict
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.models.decode_heads import SegformerHead
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import featup_mmseg.plugin  # noqa: F401
from featup_mmseg.layers import JBUStage
from featup_mmseg.models import FeatUpSegformerHead, GuidedEncoderDecoder, JBUNeck

ROOT = Path(__file__).resolve().parents[1]
ADE_CONFIGS = sorted((ROOT / 'configs' / 'featup_segformer').glob('*.py'))
NECK_CONFIG = ROOT / 'configs/featup_neck/vit-s16_jbu-neck_linear_8xb2-80k_ade20k-512x512.py'

init_default_scope('mmseg')

HEAD_CFG = dict(in_channels=[8, 16, 24, 32], in_index=[0, 1, 2, 3], channels=16,
                dropout_ratio=0.1, num_classes=5, norm_cfg=dict(type='BN', requires_grad=True),
                align_corners=False)


def _levels(batch=2, size=32, channels=(8, 16, 24, 32)):
    return [torch.randn(batch, c, size // 2**i, size // 2**i) for i, c in enumerate(channels)]


# ----------------------------------------------------------------------------------------
# FeatUpSegformerHead

def test_bilinear_head_is_mmseg_segformer_head():
    torch.manual_seed(0)
    reference = SegformerHead(**HEAD_CFG).eval()
    head = FeatUpSegformerHead(upsampler=dict(type='bilinear'), **HEAD_CFG).eval()
    head.load_state_dict(reference.state_dict(), strict=True)  # same parameter names
    inputs = _levels()
    torch.testing.assert_close(head(inputs), reference(inputs), rtol=0, atol=0)


def test_jbu_head_adds_exactly_six_guided_stages():
    bilinear = FeatUpSegformerHead(upsampler=dict(type='bilinear'), **HEAD_CFG)
    head = FeatUpSegformerHead(**HEAD_CFG)
    assert [len(stages) for stages in head.guided_stages] == [1, 2, 3]
    stages = [stage for level in head.guided_stages for stage in level]
    assert all(isinstance(s, JBUStage) and s.guidance_dim == 16 for s in stages)
    extra = sum(p.numel() for p in head.parameters()) - sum(
        p.numel() for p in bilinear.parameters())
    assert extra == sum(p.numel() for s in stages for p in s.parameters())
    assert set(bilinear.state_dict()) <= set(head.state_dict())


def test_jbu_head_climbs_one_level_per_stage_guided_by_projections(monkeypatch):
    head = FeatUpSegformerHead(**HEAD_CFG).eval()
    calls = []
    original = JBUStage.forward

    def spy(stage, source, guidance, products=None):
        calls.append((tuple(source.shape[-2:]), tuple(guidance.shape), products is not None))
        return original(stage, source, guidance, products)

    monkeypatch.setattr(JBUStage, 'forward', spy)
    out = head(_levels(size=64))
    assert out.shape == (2, 5, 64, 64)
    # c2 -> c1; c3 -> c2 -> c1; c4 -> c3 -> c2 -> c1, each guided by a 16-channel projection;
    # the stages sharing a guidance (c1's three, c2's two) are given its projections
    assert calls == [((32, 32), (2, 16, 64, 64), True), ((16, 16), (2, 16, 32, 32), True),
                     ((32, 32), (2, 16, 64, 64), True), ((8, 8), (2, 16, 16, 16), False),
                     ((16, 16), (2, 16, 32, 32), True), ((32, 32), (2, 16, 64, 64), True)]


@pytest.mark.parametrize('range_kernel', ['softmax', 'no_mlp', 'gaussian_euclidean',
                                          'gaussian_cosine'])
def test_every_range_kernel_trains(range_kernel):
    head = FeatUpSegformerHead(upsampler=dict(type='JBUStage', range_kernel=range_kernel),
                               **HEAD_CFG)
    out = head(_levels(size=64))
    out.square().mean().backward()
    for stages in head.guided_stages:
        for stage in stages:
            assert stage.fixup_proj[0].weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------
# build-time errors

def _vit(embed_dims=32, img_size=64):
    return dict(type='VisionTransformer', img_size=(img_size, img_size), patch_size=16,
                embed_dims=embed_dims, num_layers=2, num_heads=2, out_indices=(1, ),
                final_norm=True)


def _segmentor(segmentor='GuidedEncoderDecoder', neck=None, backbone=None, head=None,
               test_cfg=None, size=64):
    # ConfigDict like a loaded config: mmseg reads test_cfg by attribute
    return ConfigDict(
        type=segmentor,
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               size=(size, size)),
        backbone=backbone or _vit(img_size=size),
        neck=neck if neck is not None else dict(type='JBUNeck', in_channels=32),
        decode_head=head or dict(type='FCNHead', in_channels=32, in_index=-1, channels=32,
                                 num_convs=0, concat_input=False, num_classes=3,
                                 norm_cfg=dict(type='BN')),
        test_cfg=test_cfg or dict(mode='whole'))


def test_mmengine_flop_counter_traces_jbu_models():
    """get_model_complexity_info traces with gradients on (the compiled resize got 0-d
    tensor sizes there); the JBU stages' operators are traced and counted."""
    from mmengine.analysis import get_model_complexity_info
    model = MODELS.build(_segmentor(neck=dict(type='JBUNeck', in_channels=32, num_stages=2)))
    info = get_model_complexity_info(model.eval(), input_shape=(3, 64, 64), show_table=False,
                                     show_arch=False)
    assert info['flops'] > 0 and info['params'] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('build, message', [
    (lambda: MODELS.build(dict(type='FeatUpSegformerHead', upsampler=dict(type='CARAFEX'),
                               **HEAD_CFG)),
     r"unknown upsampler type 'CARAFEX'; use dict\(type='JBUStage'"),
    (lambda: MODELS.build(dict(type='FeatUpSegformerHead', **{**HEAD_CFG, 'in_index': [0, 1]})),
     r'in_channels \[8, 16, 24, 32\] and in_index \[0, 1\] must be lists of equal length'),
    (lambda: MODELS.build(dict(type='FeatUpUPerHead', **{**HEAD_CFG, 'in_index': [0, 1, 2]})),
     r'FeatUpUPerHead: in_channels \[8, 16, 24, 32\] and in_index \[0, 1, 2\] must be lists '
     r'of equal length, one channel count per selected backbone level'),
    # mmcv registers these in the same registry: single-input layers, not guided upsamplers
    (lambda: MODELS.build(dict(type='FeatUpSegformerHead', upsampler=dict(type='carafe'),
                               **HEAD_CFG)),
     r"upsampler type 'carafe' is mmcv.ops.carafe.CARAFEPack, which is not a guided "
     r"upsampler .* \(did you mean 'CARAFE'\?\)"),
    (lambda: MODELS.build(dict(type='FeatUpUPerHead', upsampler=dict(type='deconv'),
                               **HEAD_CFG)),
     r"upsampler type 'deconv' is .*, which is not a guided upsampler"),
    (lambda: MODELS.build(dict(type='FeatUpSegformerHead', upsampler=dict(type='pixel_shuffle'),
                               **HEAD_CFG)),
     r"upsampler type 'pixel_shuffle' is .*PixelShufflePack, which is not a guided upsampler"),
    (lambda: MODELS.build(_segmentor(segmentor='EncoderDecoder')),
     r"only GuidedEncoderDecoder passes to necks: set model.type='GuidedEncoderDecoder'"),
    (lambda: MODELS.build(_segmentor(neck=dict(type='JBUNeck', in_channels=32, out_stride=4,
                                               output_size=64))),
     r'give one of out_stride, output_size and scale_factor, got out_stride, output_size'),
    (lambda: MODELS.build(_segmentor(neck=dict(type='JBUNeck', in_channels=[32]))),
     r'in_channels must be the channel count \(int\) of the upsampled features'),
])
def test_bad_configs_fail_at_build_time(build, message):
    with pytest.raises(Exception, match=message):
        build()


def test_channel_mismatch_names_the_fix():
    model = MODELS.build(_segmentor(neck=dict(type='JBUNeck', in_channels=48)))
    with pytest.raises(ValueError, match=r'backbone output -1 has 32 channels but '
                       r'in_channels=48; set neck.in_channels=32'):
        model(torch.randn(1, 3, 64, 64), mode='tensor')


# ----------------------------------------------------------------------------------------
# GuidedEncoderDecoder + JBUNeck in every mode

def _batch(batch=2, size=64, num_classes=3):
    samples = []
    for _ in range(batch):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size)))
        samples.append(sample)
    return torch.randn(batch, 3, size, size), samples


@pytest.mark.parametrize('test_cfg, crops', [
    (dict(mode='whole'), [(64, 64)]),
    (dict(mode='slide', crop_size=(48, 48), stride=(16, 16)), [(48, 48)] * 4),
])
def test_guided_segmentor_passes_the_image_in_every_mode(monkeypatch, test_cfg, crops):
    spy = ImageSpy(monkeypatch, JBUNeck)
    model = MODELS.build(_segmentor(test_cfg=test_cfg))
    assert isinstance(model, GuidedEncoderDecoder)
    inputs, samples = _batch()

    losses = model(inputs, samples, mode='loss')
    assert torch.isfinite(losses['decode.loss_ce'])
    losses['decode.loss_ce'].backward()
    assert model.neck.upsampler.up1.range_proj[0].weight.grad is not None
    assert spy.images[-1] is inputs

    logits = model(inputs, mode='tensor')
    assert logits.shape == (2, 3, 16, 16)  # out_stride 4: the neck's output grid
    assert spy.images[-1] is inputs

    spy.images.clear()
    model.eval()
    with torch.no_grad():
        predictions = model(inputs, samples, mode='predict')
    assert [tuple(i.shape[-2:]) for i in spy.images] == crops
    assert predictions[0].pred_sem_seg.data.shape == (1, 64, 64)


def test_neck_output_sizes_and_passthrough():
    model = MODELS.build(_segmentor(backbone=dict(_vit(img_size=64), out_indices=(0, 1)),
                                    neck=dict(type='JBUNeck', in_channels=32, in_index=1,
                                              output_size=(24, 40))))
    inputs = torch.randn(1, 3, 64, 64)
    features = model.backbone(inputs)
    out = model.neck(features, inputs)
    assert out[1].shape == (1, 32, 24, 40)
    assert out[0] is features[0]  # other levels pass through


@pytest.mark.parametrize('timm_backbone, channels', [
    (dict(model_name='resnet18', out_indices=(1, 2, 3, 4)), 512),
    (dict(model_name='vit_tiny_patch16_224', out_indices=(11, ), img_size=64), 192),
], ids=['resnet18', 'vit_tiny_patch16_224'])
def test_timm_backbones_behind_jbu_neck(timm_backbone, channels):
    model = MODELS.build(
        _segmentor(
            backbone=dict(type='TIMMBackbone', features_only=True, pretrained=False,
                          **timm_backbone),
            neck=dict(type='JBUNeck', in_channels=channels, out_stride=8, num_stages=2),
            head=dict(type='FCNHead', in_channels=channels, in_index=-1, channels=64,
                      num_convs=1, concat_input=False, num_classes=3,
                      norm_cfg=dict(type='BN'))))
    inputs, samples = _batch(size=64)
    assert model(inputs, mode='tensor').shape == (2, 3, 8, 8)
    assert torch.isfinite(model(inputs, samples, mode='loss')['decode.loss_ce'])


# ----------------------------------------------------------------------------------------
# strict pretrained weights through init_cfg

def _converted_featup_weights(tmp_path, dim=32):
    source = tmp_path / 'featup.ckpt'
    torch.save(official_featup_checkpoint(dim=dim), source)
    destination = tmp_path / 'converted.pth'
    run_tool('convert_featup_checkpoint.py', source, destination)
    return source, destination


def test_neck_loads_converted_featup_weights_strictly(tmp_path):
    source, converted = _converted_featup_weights(tmp_path)
    neck_cfg = dict(type='JBUNeck', in_channels=32, feature_norm=True,
                    init_cfg=dict(type='Pretrained', checkpoint=str(converted)))
    model = MODELS.build(_segmentor(neck=neck_cfg))
    model.init_weights()
    original = torch.load(source, weights_only=True)['state_dict']
    torch.testing.assert_close(model.neck.upsampler.up3.range_proj[3].weight,
                               original['upsampler.up3.range_proj.3.weight'])
    torch.testing.assert_close(model.neck.norm.norm.bias, original['model.1.norm.bias'])

    mismatched = MODELS.build(_segmentor(neck={**neck_cfg, 'feature_norm': False}))
    with pytest.raises(ValueError, match=r'2 unexpected keys:\n  norm.norm.bias\n  '
                       r'norm.norm.weight'):
        mismatched.init_weights()


# ----------------------------------------------------------------------------------------
# configs

def _build_without_downloads(config):
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model), cfg


RANGE_KERNEL_OF = {
    'featup-jbu': 'softmax',
    'featup-jbu-no-mlp': 'no_mlp',
    'featup-jbu-gaussian-euclidean': 'gaussian_euclidean',
    'featup-jbu-gaussian-cosine': 'gaussian_cosine',
}


def test_ade20k_configs_match_the_paper_setting():
    names = {path.name for path in ADE_CONFIGS}
    jbu_and_bilinear = [ROOT / 'configs' / 'featup_segformer' /
                        f'segformer_mit-b1_{variant}_8xb2-160k_ade20k-512x512.py'
                        for variant in ('bilinear', *RANGE_KERNEL_OF)]
    assert {path.name for path in jbu_and_bilinear} <= names
    params = {}
    for path in ADE_CONFIGS:
        model, cfg = _build_without_downloads(path)
        head = cfg.model.decode_head
        assert isinstance(model.decode_head, FeatUpSegformerHead)
        assert head.num_classes == 150 and head.channels == 256
        assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
        optimizer = cfg.optim_wrapper.optimizer
        assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 6e-5, 0.01)
        assert cfg.optim_wrapper.paramwise_cfg.custom_keys['head'].lr_mult == 10.0
        assert cfg.param_scheduler[0].end == 1500
        variant = path.name.split('_')[2]
        params[variant] = sum(p.numel() for p in model.parameters())
        if path not in jbu_and_bilinear:
            continue  # the other upsamplers' rows: tests/test_baseline_upsamplers_in_mmseg.py
        if variant == 'bilinear':
            assert model.decode_head.upsampler_type == 'bilinear'
        else:
            stages = [s for level in model.decode_head.guided_stages for s in level]
            assert len(stages) == 6
            assert {s.range_kernel_type for s in stages} == {RANGE_KERNEL_OF[variant]}
    assert round(params['bilinear'] / 1e6, 1) == 13.7  # SegFormer-B1 (spec section 4)
    assert params['featup-jbu'] - params['bilinear'] == 6 * 26726  # six Cg=256 stages


def test_neck_example_config_builds_and_runs():
    model, cfg = _build_without_downloads(NECK_CONFIG)
    assert cfg.model.type == 'GuidedEncoderDecoder' and isinstance(model.neck, JBUNeck)
    model = model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 128, 128), mode='tensor')
    assert logits.shape == (1, 150, 32, 32)
