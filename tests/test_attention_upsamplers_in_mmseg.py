"""AnyUp and NAF in mmseg: the upsampling neck and the image-guided output upsampler build
them from configs, call them with the image and the output size, load their converted
published weights strictly, train in a segmentor, and refuse the slots they do not fit."""
import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, run_tool
from mmengine.config import ConfigDict
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import featup_mmseg.plugin  # noqa: F401
from featup_mmseg.layers.attention_upsamplers import NAF, AnyUp
from featup_mmseg.models.image_guidance import guided_segmentor_build
from test_swap_upsamplers import FAMILIES, _synthetic_batch

init_default_scope('mmseg')
METHODS = {'AnyUp': AnyUp, 'NAF': NAF}
TOOL = ROOT / 'tools' / 'convert_attention_upsampler_checkpoint.py'


def _neck(upsampler, in_channels=8, **kwargs):
    with guided_segmentor_build():
        return MODELS.build(dict(type='FeatureUpsamplingNeck', in_channels=in_channels,
                                 upsampler=upsampler, **kwargs))


def _segmentor(slot, method, size=64):
    """A small GuidedEncoderDecoder with ``method`` as its neck (a frozen ResNet level
    upsampled to 1/2 and classified by an FCN head) or as PSPNet's output upsampler."""
    cfg = dict(
        type='GuidedEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               size=(size, size)),
        test_cfg=dict(mode='whole'))
    if slot == 'output':
        cfg.update(copy.deepcopy(FAMILIES['pspnet_output']))
        cfg['output_upsampler'] = dict(out_stride=1, upsampler=dict(type=method))
    else:
        psp = copy.deepcopy(FAMILIES['pspnet_output'])
        cfg.update(
            backbone=psp['backbone'],
            neck=dict(type='FeatureUpsamplingNeck', in_channels=64, in_index=3,
                      upsampler=dict(type=method), out_stride=2),
            decode_head=dict(type='FCNHead', in_channels=64, in_index=3, channels=16,
                             num_convs=1, concat_input=False, num_classes=5,
                             norm_cfg=dict(type='BN', requires_grad=True),
                             align_corners=False,
                             loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)))
    return MODELS.build(ConfigDict(cfg))


@pytest.mark.parametrize('method', METHODS)
def test_neck_calls_the_upsampler_once_with_the_image_and_the_output_size(method):
    torch.manual_seed(0)
    neck = _neck(dict(type=method), out_stride=2).eval()
    assert isinstance(neck.upsampler, METHODS[method])
    features, image = torch.randn(2, 8, 5, 7), torch.randn(2, 3, 40, 56)
    other = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        out = neck([other, features], image)
        expected = neck.upsampler(image, features, (20, 28))
    assert out[0] is other
    assert out[1].shape == (2, 8, 20, 28)
    torch.testing.assert_close(out[1], expected, rtol=0, atol=0)
    assert neck.upsample(features, image, memory_format=torch.channels_last) \
        .is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('method', METHODS)
def test_output_upsampler_replaces_the_jbu_stack(method):
    with guided_segmentor_build():
        output = MODELS.build(dict(type='ImageGuidedOutputUpsampler', in_channels=16,
                                   out_stride=2, upsampler=dict(type=method)))
    assert isinstance(output.upsampler, METHODS[method])
    assert all(key.startswith('upsampler.') for key in output.state_dict())
    features, image = torch.randn(1, 16, 4, 6), torch.randn(1, 3, 32, 48)
    assert output(features, image).shape == (1, 16, 16, 24)


@pytest.mark.parametrize('slot', ['neck', 'output'])
@pytest.mark.parametrize('method', METHODS)
def test_segmentor_trains_with_the_upsampler_on_synthetic_shapes(slot, method):
    torch.manual_seed(0)
    model = _segmentor(slot, method)
    model.init_weights()
    upsampler = model.neck.upsampler if slot == 'neck' else model.output_upsampler.upsampler
    before = {name: p.detach().clone() for name, p in upsampler.named_parameters()}
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=5e-3))
    data = _synthetic_batch(batch=2)
    losses = [model.train_step(data, optim)['loss'].item() for _ in range(6)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    # every parameter of the upsampler is in the graph and learns
    unchanged = [name for name, p in upsampler.named_parameters()
                 if torch.equal(p, before[name])]
    assert not unchanged, unchanged
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 48), mode='tensor')
    # the neck's level at 1/2 (out_stride 2); the output upsampler's logits at the image
    assert logits.shape == ((1, 5, 64, 48) if slot == 'output' else (1, 5, 32, 24))


@pytest.mark.parametrize('method', METHODS)
def test_converted_published_weights_load_strictly_in_both_slots(method, tmp_path):
    from test_anyup import _published as anyup_published
    from test_naf import published_naf_state_dict as naf_published
    published = (anyup_published if method == 'AnyUp' else naf_published)(seed=1)
    source, converted = tmp_path / 'published.pth', tmp_path / 'converted.pth'
    torch.save(published, source)
    result = run_tool('convert_attention_upsampler_checkpoint.py', method.lower(), source,
                      converted)
    assert result.returncode == 0, result.stderr
    assert f'{method},' in result.stdout
    init_cfg = dict(type='Pretrained', checkpoint=str(converted))
    neck = _neck(dict(type=method), init_cfg=init_cfg)
    with guided_segmentor_build():
        output = MODELS.build(dict(type='ImageGuidedOutputUpsampler', in_channels=16,
                                   upsampler=dict(type=method), init_cfg=init_cfg))
    reference = METHODS[method]()
    reference.load_state_dict(
        {k[len('upsampler.'):]: v
         for k, v in torch.load(converted, weights_only=True)['state_dict'].items()})
    for module in (neck, output):
        module.init_weights()
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(module.upsampler.state_dict()[name], value,
                                       rtol=0, atol=0)
    # the other method's file, and a file that is not a converted one, are refused
    other, other_name = ('naf', 'a NAF') if method == 'AnyUp' else ('anyup', 'an AnyUp')
    wrong = subprocess.run([sys.executable, str(TOOL), other, str(source),
                            str(tmp_path / 'wrong.pth')], capture_output=True, text=True)
    assert wrong.returncode == 1 and f'error: not {other_name} checkpoint' in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert not (tmp_path / 'wrong.pth').exists()
    bad = _neck(dict(type=method), init_cfg=dict(type='Pretrained', checkpoint=str(source)))
    with pytest.raises(ValueError, match='missing keys'):
        bad.init_weights()


@pytest.mark.parametrize('build, match', [
    (lambda: MODELS.build(dict(type='ImageGuidedOutputUpsampler', in_channels=16,
                               num_stages=3, upsampler=dict(type='AnyUp'))),
     r'num_stages configure the JBU stack; they do not apply with upsampler'),
    (lambda: MODELS.build(dict(type='ImageGuidedOutputUpsampler', in_channels=16,
                               upsampler=dict(type='CARAFE'))),
     r"type of \('AnyUp', 'NAF'\)"),
    (lambda: _neck(dict(type='NAF'), in_channels=6), r'NAF.*6'),
    (lambda: MODELS.build(dict(type='FeatUpSegformerHead', in_channels=[8, 16, 32, 64],
                               in_index=[0, 1, 2, 3], channels=16, num_classes=5,
                               upsampler=dict(type='AnyUp'))),
     r'AnyUp upsamples features to any size in one step guided by the image'),
])
def test_wrong_slots_and_arguments_are_refused_with_the_fix(build, match):
    with guided_segmentor_build(), pytest.raises(ValueError, match=match):
        build()
