"""The upsamplers of FeatUp's Table 2 (and DySample) in mmseg: registered, trained in the
SegFormer head, and their ADE20K configs."""
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from test_swap_upsamplers import _synthetic_batch

import featup_mmseg.plugin  # noqa: F401
from featup_mmseg.layers import feature_upsamplers
from featup_mmseg.models import FeatUpSegformerHead, FeatUpUPerHead

ROOT = Path(__file__).resolve().parents[1]
init_default_scope('mmseg')

METHODS = ('ResizeConv', 'CARAFE', 'IndexNet', 'A2U', 'SAPA', 'FADE', 'DySample')
BN = dict(type='BN', requires_grad=True)


def test_every_method_is_a_registered_guided_upsampler():
    assert set(METHODS) == set(feature_upsamplers.__all__)
    for name in METHODS:
        assert MODELS.get(name) is getattr(feature_upsamplers, name)
    # mmcv's own single-input upsample layers keep their names
    assert MODELS.get('carafe').__name__ == 'CARAFEPack'
    assert MODELS.get('bilinear').__name__ == 'Upsample'


def _segformer(upsampler, size=64):
    mit = dict(type='MixVisionTransformer', in_channels=3, embed_dims=8, num_stages=4,
               num_layers=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], patch_sizes=[7, 3, 3, 3],
               sr_ratios=[8, 4, 2, 1], out_indices=(0, 1, 2, 3), mlp_ratio=2)
    head = dict(type='FeatUpSegformerHead', in_channels=[8, 16, 32, 64], in_index=[0, 1, 2, 3],
                channels=32, num_classes=5, dropout_ratio=0.0, norm_cfg=BN,
                align_corners=False, upsampler=upsampler,
                loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0))
    return MODELS.build(ConfigDict(
        type='EncoderDecoder', backbone=mit, decode_head=head,
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               size=(size, size)),
        test_cfg=dict(mode='whole')))


@pytest.mark.parametrize('method', METHODS)
def test_every_method_trains_in_the_segformer_head(method):
    torch.manual_seed(0)
    model = _segformer(dict(type=method))
    model.init_weights()
    stages = [s for level in model.decode_head.guided_stages for s in level]
    assert len(stages) == 6 and all(type(s).__name__ == method for s in stages)
    initial = [[p.clone() for p in s.parameters()] for s in stages]
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=5e-3))
    data = _synthetic_batch()
    losses = [model.train_step(data, optim)['loss'].item() for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    # every stage is in the graph and learns
    assert all(any(not torch.equal(p, q) for p, q in zip(s.parameters(), ps))
               for s, ps in zip(stages, initial))
    model.eval()
    with torch.no_grad():
        assert model(data['inputs'][0][None].float(), mode='tensor').shape == (1, 5, 16, 16)


# parameters each row adds to SegFormer-B1 (six stages at 256 channels) and Table 2's
TABLE2_PARAMS = {
    'resize-conv': (3_540_480, 3.54), 'indexnet': (12_601_344, 12.6), 'sapa': (None, 0.20),
    'fade': (285_084, 0.29), 'carafe': (444_888, None), 'a2u': (64_740, None),
    'dysample': (49_344, None),
}


def _build(path):
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None
    cfg.model.pop('pretrained', None)
    return MODELS.build(cfg.model)


def test_segformer_configs_of_every_table2_row():
    folder = ROOT / 'configs/featup_segformer'
    bilinear = sum(p.numel() for p in _build(
        folder / 'segformer_mit-b1_bilinear_8xb2-160k_ade20k-512x512.py').parameters())
    for row, (exact, table2) in TABLE2_PARAMS.items():
        model = _build(folder / f'segformer_mit-b1_{row}_8xb2-160k_ade20k-512x512.py')
        assert isinstance(model.decode_head, FeatUpSegformerHead)
        added = sum(p.numel() for p in model.parameters()) - bilinear
        if exact is not None:
            assert added == exact, row
        if table2 is not None:  # the rows whose variant reproduces Table 2's count
            assert added / 1e6 == pytest.approx(table2, abs=0.05 if table2 > 10 else 0.005)


@pytest.mark.parametrize('method', ['carafe', 'sapa', 'fade', 'dysample'])
def test_upernet_configs_of_the_baselines(method):
    model = _build(ROOT / f'configs/featup_upernet/upernet_r50_{method}_4xb4-160k_ade20k-512x512.py')
    assert isinstance(model.decode_head, FeatUpUPerHead)
    stages = [*model.decode_head.top_down_stages,
              *(s for level in model.decode_head.guided_stages for s in level)]
    assert len(stages) == 9 and all(type(s).__name__.lower() == method for s in stages)
