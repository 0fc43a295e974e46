"""Bad inputs above the ops: refused where they enter, with errors that say what to change;
and the safety of loading mmengine's checkpoints."""
import importlib.util
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT
from mmengine.config import Config, ConfigDict
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.structures import PixelData
from mmseg.registry import HOOKS, MODELS
from mmseg.structures import SegDataSample

import featup_mmseg.plugin  # noqa: F401
from featup_mmseg.datasets import generate_synthetic_shapes
from featup_mmseg.engine import (allow_mmengine_checkpoint_globals,
                                 torch_refuses_mmengine_checkpoints)
from featup_mmseg.models.input_size import level_stride

PRETRAIN_DEMO = ROOT / 'configs/demo/vit-tiny_jbu-neck_featup-pretrain_synthetic-128x128.py'

init_default_scope('mmseg')


# ----------------------------------------------------------------------------------------
# FeatUpPretrainHook: every argument checked when the config is built


@pytest.mark.parametrize('kwargs, message', [
    (dict(proj_dim=0), r'proj_dim must be an integer >= 1, got 0'),
    (dict(log_interval=0), r'log_interval must be an integer >= 1, got 0'),
    (dict(max_zoom=0.5), r'max_zoom must be a finite number >= 1.0, got 0.5'),
    (dict(max_zoom=float('nan')), r'max_zoom must be a finite number >= 1.0, got nan'),
    (dict(max_pad=-1), r'max_pad must be an integer >= 0, got -1'),
    (dict(downsampler='bilinear'), r"downsampler must be one of \('attention', 'simple'\), "
     r"got 'bilinear'"),
    (dict(optimizer=dict(type='NAdamm', lr=1e-3)), r"optimizer must be a dict whose type is "
     r"an optimizer registered in mmengine's OPTIMIZERS .*'NAdamm'"),
    (dict(optimizer='NAdam'), r'optimizer must be a dict'),
    (dict(steps=0), r'steps must be an integer >= 1, got 0'),
    (dict(images_per_step=2.5), r'images_per_step must be an integer >= 1, got 2.5'),
    (dict(num_jitters=0), r'num_jitters must be an integer >= 1, got 0'),
    (dict(kernel_size=0), r'kernel_size must be an integer >= 1, got 0'),
    (dict(tv_weight=-0.1), r'tv_weight must be a finite number >= 0.0, got -0.1'),
    (dict(uncertainty='yes'), r"uncertainty must be one of \(True, False\), got 'yes'"),
    (dict(checkpoint_name='../up.pth'), r"checkpoint_name must be a file name .*'../up.pth'"),
    (dict(target='backbone'), r"target must be one of \('auto', 'neck', 'decode_head'\)"),
])
def test_hook_arguments_are_checked_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match='FeatUpPretrainHook: ' + message):
        HOOKS.build(dict(type='FeatUpPretrainHook', **kwargs))


def test_hook_accepts_optimizer_classes_and_registered_names():
    for optimizer_type in ('AdamW', torch.optim.SGD):
        hook = HOOKS.build(dict(type='FeatUpPretrainHook',
                                optimizer=dict(type=optimizer_type, lr=1e-4)))
        assert hook.optimizer_cfg == dict(type=optimizer_type, lr=1e-4)


# ----------------------------------------------------------------------------------------
# tools/pretrain_upsampler.py starts from load_from, as training would


def _pretrain_tool():
    spec = importlib.util.spec_from_file_location('pretrain_upsampler',
                                                  ROOT / 'tools' / 'pretrain_upsampler.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return generate_synthetic_shapes(tmp_path_factory.mktemp('synthetic'), num_train=8,
                                     num_val=2)


def _demo_cfg(data_root, work_dir, load_from=None):
    cfg = Config.fromfile(PRETRAIN_DEMO)
    cfg.work_dir = str(work_dir)
    cfg.load_from = None if load_from is None else str(load_from)
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[name].dataset.data_root = str(data_root)
        cfg[name].num_workers, cfg[name].persistent_workers = 0, False
    return cfg


def test_pretrain_tool_loads_load_from(data_root, tmp_path):
    torch.manual_seed(123)
    source = MODELS.build(Config.fromfile(PRETRAIN_DEMO).model)
    checkpoint = tmp_path / 'trained.pth'
    torch.save({'state_dict': source.state_dict()}, checkpoint)
    runner, hook = _pretrain_tool().prepare(_demo_cfg(data_root, tmp_path / 'run', checkpoint))
    assert hook.steps == 40
    loaded = runner.model.backbone.state_dict()
    for key, value in source.backbone.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


@pytest.mark.parametrize('content, reason', [
    (None, 'weights.pth can not be found'), (b'garbage', 'is not a readable PyTorch checkpoint'),
    (b'', 'is empty (0 bytes), not a PyTorch checkpoint')],
    ids=['missing', 'not-a-checkpoint', 'empty'])
def test_pretrain_tool_refuses_a_load_from_it_cannot_load(tmp_path, content, reason):
    path = tmp_path / 'weights.pth'
    if content is not None:
        path.write_bytes(content)
    result = subprocess.run([
        sys.executable, str(ROOT / 'tools' / 'pretrain_upsampler.py'), str(PRETRAIN_DEMO),
        '--work-dir', str(tmp_path / 'run'), '--cfg-options', f'load_from={path}'
    ], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode != 0
    assert f"pretrain_upsampler.py: error: cannot load load_from='{path}': " in result.stderr
    assert reason in result.stderr
    assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'run' / 'featup_pretrained_upsampler.pth').exists()


# ----------------------------------------------------------------------------------------
# neck, head and stage arguments, checked when the model is built


def _guided(neck, size=64):
    return ConfigDict(
        type='GuidedEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
        backbone=dict(type='VisionTransformer', img_size=(size, size), patch_size=16,
                      embed_dims=32, num_layers=1, num_heads=2, out_indices=(0, ),
                      final_norm=True),
        neck=neck,
        decode_head=dict(type='FCNHead', in_channels=32, in_index=-1, channels=32,
                         num_convs=0, concat_input=False, num_classes=3,
                         norm_cfg=dict(type='BN')),
        test_cfg=dict(mode='whole'))


MIT_CHANNELS = [8, 16, 24, 32]


def _segformer(upsampler=None, **head):
    return ConfigDict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
        backbone=dict(type='MixVisionTransformer', in_channels=3, embed_dims=8, num_stages=4,
                      num_layers=[1, 1, 1, 1], num_heads=[1, 2, 3, 4],
                      patch_sizes=[7, 3, 3, 3], sr_ratios=[8, 4, 2, 1],
                      out_indices=(0, 1, 2, 3), mlp_ratio=2),
        decode_head=dict(type='FeatUpSegformerHead', in_channels=MIT_CHANNELS,
                         in_index=[0, 1, 2, 3], channels=16, num_classes=3,
                         norm_cfg=dict(type='BN'), align_corners=False,
                         **({} if upsampler is None else dict(upsampler=upsampler)), **head),
        test_cfg=dict(mode='whole'))


@pytest.mark.parametrize('cfg, message', [
    (_guided(dict(type='JBUNeck', in_channels=32, out_stride=0)),
     r'JBUNeck: out_stride must be an integer >= 1, got 0'),
    (_guided(dict(type='JBUNeck', in_channels=32, out_stride=-4)),
     r'JBUNeck: out_stride must be an integer >= 1, got -4'),
    (_guided(dict(type='JBUNeck', in_channels=32, scale_factor=-2)),
     r'JBUNeck: scale_factor must be a finite number >= 1.0, got -2'),
    (_guided(dict(type='JBUNeck', in_channels=32, scale_factor=0.5)),
     r'JBUNeck: scale_factor must be a finite number >= 1.0, got 0.5'),
    (_guided(dict(type='JBUNeck', in_channels=32, output_size=(0, 16))),
     r'JBUNeck: output_size must be a positive int or an \(H, W\) pair of positive ints, '
     r'got \(0, 16\)'),
    (_guided(dict(type='JBUNeck', in_channels=32, in_index='last')),
     r"JBUNeck: in_index must be the index \(int\) of a backbone output, got 'last'"),
    (_guided(dict(type='JBUNeck', in_channels=32, num_stages=0)),
     r'JBUStack: num_stages must be an integer >= 1, got 0'),
    (_guided(dict(type='JBUNeck', in_channels=32, radius=0)),
     r'JBUStage: radius must be an integer >= 1, got 0'),
    (_guided(dict(type='JBUNeck', in_channels=32, key_dim=0)),
     r'JBUStage: key_dim must be an integer >= 1, got 0'),
    (_segformer(upsampler=dict()),
     r"FeatUpSegformerHead: upsampler must be a dict with a type: dict\(type='JBUStage'.*"
     r'got \{\}'),
    (_segformer(upsampler='bilinear'),
     r"upsampler must be a dict with a type: .*got 'bilinear'"),
    (_segformer(upsampler=dict(type='bilinear', radius=3, key_dim=8)),
     r"upsampler=dict\(type='bilinear'\) takes no other keys, got unexpected keys "
     r"\['key_dim', 'radius'\]"),
    (_segformer(upsampler=dict(type='JBUStage', radius=-1)),
     r'JBUStage: radius must be an integer >= 1, got -1'),
    (_segformer(interpolate_mode='linear'),
     r"FeatUpSegformerHead: interpolate_mode must be one of .*got 'linear'"),
])
def test_bad_model_arguments_fail_at_build_time(cfg, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build(cfg)


# ----------------------------------------------------------------------------------------
# inputs too small for the guided stages: the error names the smallest image size


def _samples(height, width):
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(height, width),
                                             ori_shape=(height, width),
                                             pad_shape=(height, width)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, height, width)))
        samples.append(sample)
    return samples


def test_segformer_head_names_the_smallest_image():
    # MiT levels have ceil(S / 4), ..., ceil(S / 32) pixels; the coarsest guide (1/16) of a
    # radius-3 stage needs 4: ceil(S / 16) >= 4 from S = 49 on
    model = MODELS.build(_segformer())
    message = (r'FeatUpSegformerHead with radius-3 JBU stages needs input images of at least '
               r'49 x 49 px, got 48 x 60; resize or pad the inputs, or with slide inference use '
               r'a crop_size of at least 49 x 49')
    inputs = torch.randn(2, 3, 48, 60)
    with pytest.raises(ValueError, match=message):
        model(inputs, _samples(48, 60), mode='loss')
    model.eval()
    with pytest.raises(ValueError, match=message), torch.no_grad():
        model(inputs, _samples(48, 60), mode='predict')
    with pytest.raises(ValueError, match=r'needs each guiding level at least 4 x 4, got \(3, 4\) '
                       r'at input 2 \(in_index 2\): the input images are too small'):
        model(inputs, mode='tensor')
    model.train()
    losses = model(torch.randn(2, 3, 49, 49), _samples(49, 49), mode='loss')
    assert torch.isfinite(losses['decode.loss_ce'])
    model.eval()
    with torch.no_grad():
        predictions = model(torch.randn(2, 3, 49, 64), _samples(49, 64), mode='predict')
    assert predictions[0].pred_sem_seg.data.shape == (1, 49, 64)


def test_bilinear_head_has_no_guide_to_check():
    model = MODELS.build(_segformer(upsampler=dict(type='bilinear'))).eval()
    with torch.no_grad():  # 32 px: MiT's own smallest input, too small for radius-3 stages
        assert model(torch.randn(1, 3, 32, 32), mode='tensor').shape == (1, 3, 8, 8)


@pytest.mark.parametrize('neck, below, minimum, stages', [
    # 1/16 ViT features to 1/4: the first of four stages multiplies by 4 ** 0.25, so it
    # reaches 4 pixels from 3 features on: ceil(S / 16) >= 3 from S = 33 on
    (dict(out_stride=4), 32, 33, r'\(2, 2\) to \(8, 8\) through \(3, 3\), \(4, 4\), \(6, 6\), '
     r'\(8, 8\)'),
    # to the image size (the pretraining demo): 1 -> 2 -> 4 -> 8 -> 16 at 16 px
    (dict(out_stride=1), 16, 19, r'\(1, 1\) to \(16, 16\) through \(2, 2\), \(4, 4\), \(8, 8\), '
     r'\(16, 16\)'),
], ids=['out_stride-4', 'out_stride-1'])
def test_jbu_neck_names_the_smallest_image(neck, below, minimum, stages):
    model = MODELS.build(_guided(dict(type='JBUNeck', in_channels=32, **neck))).eval()
    with pytest.raises(ValueError, match=(
            rf'JBUNeck with radius-3 JBU stages upsamples {stages}, but each stage needs at '
            rf'least 4 x 4: it needs input images of at least {minimum} x {minimum} px, got '
            rf'{below} x {below}; resize or pad the inputs, or with slide inference use a '
            rf'crop_size of at least {minimum} x {minimum}')), torch.no_grad():
        model(torch.randn(1, 3, below, below), mode='tensor')
    with torch.no_grad():
        features = model.extract_feat(torch.randn(1, 3, minimum, minimum))
    side = -(-minimum // neck['out_stride'])
    assert features[0].shape == (1, 32, side, side)


def test_jbu_neck_output_size_too_small_for_any_image():
    # radius-3 stages need 4 pixels, more than the whole output
    model = MODELS.build(_guided(dict(type='JBUNeck', in_channels=32, output_size=(3, 3),
                                      num_stages=4))).eval()
    with pytest.raises(ValueError, match=r'which no input image size gives here: use a larger '
                       r'output_size or fewer num_stages'), torch.no_grad():
        model(torch.randn(1, 3, 32, 32), mode='tensor')


def test_level_stride_estimates():
    assert level_stride((48, 60), (3, 4)) == 16  # MiT's 1/16 level
    assert level_stride((45, 45), (3, 3)) == 16
    assert level_stride((224, 224), (16, 16)) == 14  # a patch-14 ViT: no power of two fits
    assert level_stride((16, 16), (1, 1)) == 16


# ----------------------------------------------------------------------------------------
# mmengine's checkpoints: exactly their own globals, getattr only for HistoryBuffer's
# statistics methods


class _GetAttr:
    """Pickles as getattr(owner, name), as a crafted checkpoint could."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)


def _saved(tmp_path, obj):
    path = tmp_path / 'checkpoint.pth'
    torch.save({'meta': {}, 'message_hub': obj}, path)
    return str(path)


def test_mmengine_checkpoints_load_with_their_statistics(tmp_path):
    buffer = HistoryBuffer([1.0, 3.0], [1, 1])
    path = _saved(tmp_path, {'loss': buffer, 'mean': HistoryBuffer.mean,
                             'current': HistoryBuffer.current})
    loaded = CheckpointLoader.load_checkpoint(path, map_location='cpu')['message_hub']
    assert loaded['mean'] is HistoryBuffer.mean and loaded['current'] is HistoryBuffer.current
    assert loaded['loss'].mean() == 2.0


@pytest.mark.skipif(not torch_refuses_mmengine_checkpoints(),
                    reason='this torch loads with weights_only=False by default: mmengine '
                    'unpickles anything there, as it always has, and the fix does not apply')
@pytest.mark.parametrize('owner, name', [
    (HistoryBuffer, '__init__'),
    (HistoryBuffer, 'register_statistics'),
    (HistoryBuffer.mean, '__globals__'),
    (torch.Tensor, 'new_empty'),
])
def test_crafted_getattr_is_refused(tmp_path, owner, name):
    path = _saved(tmp_path, _GetAttr(owner, name))
    with pytest.raises(pickle.UnpicklingError,
                       match=r'getattr\(.*\) is not allowed in an mmengine checkpoint'):
        CheckpointLoader.load_checkpoint(path, map_location='cpu')


_LOADER = '''
import sys
from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
{body}
print('ok')
'''


def _run(body, **env):
    result = subprocess.run([sys.executable, '-c', _LOADER.format(body=body)],
                            capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **env}, timeout=300)
    assert result.returncode == 0 and result.stdout.endswith('ok\n'), result.stderr[-3000:]


def test_checkpoint_fix_is_a_no_op_where_torch_loads_them():
    # the decision itself: nothing is re-registered when torch does not refuse them
    _run('from featup_mmseg.engine import allow_mmengine_checkpoint_globals\n'
         'from featup_mmseg.engine import torch_refuses_mmengine_checkpoints\n'
         'assert allow_mmengine_checkpoint_globals(needed=False) is False\n'
         "assert CheckpointLoader._schemes[''] is load_from_local\n"
         'refused = torch_refuses_mmengine_checkpoints()\n'
         'assert allow_mmengine_checkpoint_globals() is refused\n'
         "assert (CheckpointLoader._schemes[''] is load_from_local) is not refused\n")
    # and its capability check, with torch's own switch back to weights_only=False
    _run('import featup_mmseg.plugin\n'
         'from featup_mmseg.engine import torch_refuses_mmengine_checkpoints\n'
         'assert not torch_refuses_mmengine_checkpoints()\n'
         "assert CheckpointLoader._schemes[''] is load_from_local\n",
         TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')


def test_the_capability_check_matches_torch():
    """The probe answers as torch does for a checkpoint like mmengine's (torch >= 2.6, as
    the 2.13 here: refused), and the fix applies exactly then."""
    from featup_mmseg.engine import torch_refuses_mmengine_checkpoints
    saved = io.BytesIO()
    torch.save({'meta': {'seed': np.int64(0), 'values': np.zeros(2)},
                'message_hub': {'log_scalars': {'loss': HistoryBuffer([1.0], [1])}}}, saved)
    saved.seek(0)
    try:
        torch.load(saved)
        refused = False
    except pickle.UnpicklingError:
        refused = True
    assert torch_refuses_mmengine_checkpoints() == refused
    assert allow_mmengine_checkpoint_globals() == refused
