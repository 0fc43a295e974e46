"""The tools refuse bad inputs and outputs before the expensive part, report no file they did
not write, and run the backbone at sizes its feature grid tiles (the config's by default)."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from helpers import ROOT, official_featup_checkpoint, run_tool

from featup_mmseg.file_checks import (check_input_file, check_output_dir, check_output_file,
                                      write_image)
from featup_mmseg.models.input_size import (backbone_input_size, check_stride_multiple,
                                            level_stride)

PRETRAIN_DEMO = ROOT / 'configs/demo/vit-tiny_jbu-neck_featup-pretrain_synthetic-128x128.py'
SEGFORMER_DEMO = ROOT / 'configs/demo/segformer_mit-b0_featup-jbu_synthetic-128x128.py'
# the pretraining demo's JBU neck behind timm backbones (random weights, built offline)
TIMM_NECK = '''
_base_ = [r'{base}']
model = dict(data_preprocessor=dict(size=None),
             backbone=dict(_delete_=True, type='TIMMBackbone', pretrained=False,
                           features_only=True, {backbone}),
             neck=dict(in_channels={channels}),
             decode_head=dict(in_channels={channels}, channels={channels}))
{extra}
'''
FIXED_VIT = dict(backbone="model_name='vit_tiny_patch16_224', img_size=48, out_indices=(11, )",
                 channels=192, extra='')
CONVNEXT = dict(backbone="model_name='convnext_atto', out_indices=(3, )", channels=320,
                extra='crop_size = (80, 80)')


def _failing_tool(name, *args):
    """Runs tools/<name>; must fail with one error line and no traceback."""
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / name), *map(str, args)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode != 0, result.stdout[-2000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert 'wrote' not in result.stdout
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / 'image.png'
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    return path


def _timm_config(tmp_path, spec):
    path = tmp_path / 'timm_neck.py'
    path.write_text(TIMM_NECK.format(base=PRETRAIN_DEMO, **spec))
    return path


# ----------------------------------------------------------------------------------------
# the file checks

def test_file_checks(tmp_path):
    assert check_output_dir(tmp_path / 'new' / 'dir').is_dir()
    assert check_output_file(tmp_path / 'a' / 'b.png', image=True).parent.is_dir()
    (tmp_path / 'file').write_text('x')
    with pytest.raises(OSError, match='--out .*file exists and is not a directory'):
        check_output_dir(tmp_path / 'file')
    with pytest.raises(OSError, match='--out .* is a directory; give a file name'):
        check_output_file(tmp_path)
    with pytest.raises(OSError, match='--out .*b.xyz: OpenCV cannot write images of this '
                       'extension'):
        check_output_file(tmp_path / 'b.xyz', image=True)
    with pytest.raises(OSError, match='--out .*file exists and is not a directory'):
        check_output_file(tmp_path / 'file' / 'b.png')
    with pytest.raises(OSError, match='--in .*missing.pth: No such file or directory'):
        check_input_file(tmp_path / 'missing.pth', '--in')
    assert check_input_file(tmp_path / 'file', '--in') == tmp_path / 'file'
    assert check_input_file('https://host/weights.pth', '--in') == 'https://host/weights.pth'


def test_an_image_the_device_cannot_take_is_an_error(tmp_path):
    """cv2.imwrite reports success on a full device; write_image does not."""
    full = tmp_path / 'full.png'
    full.symlink_to('/dev/full')
    check_output_file(full, image=True)  # nothing tells before the write
    with pytest.raises(OSError, match='could not write the image .*full.png: No space left'):
        write_image(full, np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / 'ok.png', np.full((8, 8, 3), 7, np.uint8))
    assert (cv2.imread(str(tmp_path / 'ok.png')) == 7).all()


# ----------------------------------------------------------------------------------------
# no false success, no work lost late

def test_visualize_features_reports_what_it_could_not_write(image, tmp_path):
    full = tmp_path / 'full.png'
    full.symlink_to('/dev/full')
    error = _failing_tool('visualize_features.py', image, PRETRAIN_DEMO, '--out', full)
    assert error.startswith('visualize_features.py: error: could not write the image')
    assert 'No space left on device' in error
    for out, message in ((tmp_path, 'is a directory; give a file name'),
                         (tmp_path / 'features.webpx', 'OpenCV cannot write images')):
        assert message in _failing_tool('visualize_features.py', image, PRETRAIN_DEMO,
                                         '--out', out)
    assert 'No such file or directory' in _failing_tool(
        'visualize_features.py', image, PRETRAIN_DEMO, '--upsampler', tmp_path / 'none.pth')


def test_implicit_tool_checks_its_outputs_before_fitting(image, tmp_path):
    (tmp_path / 'image_implicit.png').mkdir()
    args = ['implicit_featup.py', image, PRETRAIN_DEMO, '--preset', 'fast']
    error = _failing_tool(*args, '--out', tmp_path)
    assert 'image_implicit.png is a directory; give a file name' in error
    assert 'exists and is not a directory' in _failing_tool(*args, '--out', image)
    assert 'No such file or directory' in _failing_tool(*args, '--checkpoint',
                                                        tmp_path / 'none.pth')


def test_export_convert_pretrain_and_demo_check_their_outputs_first(tmp_path):
    assert 'is a directory; give a file name' in _failing_tool(
        'export_onnx.py', SEGFORMER_DEMO, '--shape', 64, 64, '--out', tmp_path)
    source = tmp_path / 'featup.ckpt'
    torch.save(official_featup_checkpoint(dim=16), source)
    assert 'destination' in _failing_tool('convert_featup_checkpoint.py', source, tmp_path)
    work_dir = tmp_path / 'run'
    (work_dir / 'featup_pretrained_upsampler.pth').mkdir(parents=True)
    error = _failing_tool('pretrain_upsampler.py', PRETRAIN_DEMO, '--work-dir', work_dir)
    assert error.startswith('pretrain_upsampler.py: error: --work-dir')
    assert 'featup_pretrained_upsampler.pth is a directory' in error
    (tmp_path / 'demo' / 'featup_demo.png').mkdir(parents=True)
    assert 'featup_demo.png is a directory' in _failing_tool(
        'demo.py', '--work-dir', tmp_path / 'demo', '--data-root', tmp_path / 'data')
    assert not (tmp_path / 'data').exists()  # nothing was generated
    assert 'checkpoint' in _failing_tool('test.py', SEGFORMER_DEMO, tmp_path / 'none.pth')


def test_pretrain_hook_checks_where_it_saves_before_its_first_step(tmp_path):
    from mmengine.config import Config
    from mmengine.runner import Runner

    import featup_mmseg.plugin  # noqa: F401
    from featup_mmseg.datasets import generate_synthetic_shapes
    cfg = Config.fromfile(PRETRAIN_DEMO)
    data_root = generate_synthetic_shapes(tmp_path / 'data', num_train=2, num_val=1)
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[name].dataset.data_root = str(data_root)
        cfg[name].num_workers, cfg[name].persistent_workers = 0, False
    cfg.work_dir = str(tmp_path / 'run')
    runner = Runner.from_cfg(cfg)
    hook = next(h for h in runner.hooks if type(h).__name__ == 'FeatUpPretrainHook')
    (tmp_path / 'run' / hook.checkpoint_name).mkdir()
    with pytest.raises(OSError, match='FeatUpPretrainHook: checkpoint_name .* is a directory'):
        hook.pretrain(runner)
    assert hook.losses == []


# ----------------------------------------------------------------------------------------
# sizes: the config's by default, checked against the backbone's grid

def test_level_stride_of_backbones_that_do_not_pad():
    # ConvNeXt at 336 px: 10 cells (floor), stride 32; a padded backbone would give 11
    assert level_stride((336, 336), (10, 10), unpadded=True) == 32
    assert level_stride((336, 336), (11, 11), unpadded=True) == 32
    assert level_stride((299, 299), (21, 21), unpadded=True) == 14  # ViT-S/14, no padding
    with pytest.raises(ValueError, match=r'--size 336 336: the backbone\'s features \(stride '
                       r'32\) would cover 10.5 x 10.5 cells of it and be stretched over the '
                       r'image; use a multiple of 32, e.g. --size 320 320 or --size 352 352'):
        check_stride_multiple('--size', (336, 336), 32)


def test_backbone_input_size_follows_the_backbone():
    grid = torch.nn.Conv2d(3, 4, 8, stride=8)  # any size, stride 8, no padding
    assert backbone_input_size('--size', None, (60, 90), grid, grid, (64, 64)) == (64, 88)
    assert backbone_input_size('--size', (40, 48), (60, 90), grid, grid, (64, 64)) == (40, 48)
    with pytest.raises(ValueError, match='use a multiple of 8, e.g. --size 40 48 or --size '
                       '48 56'):
        backbone_input_size('--size', (44, 50), (60, 90), grid, grid, (64, 64))


def test_visualize_features_defaults_to_a_fixed_size_backbone_s_size(image, tmp_path):
    """A timm ViT built for 48 px: the tool used 224 x 224 and failed in timm."""
    config = _timm_config(tmp_path, FIXED_VIT)
    out = tmp_path / 'features.png'
    run_tool('visualize_features.py', image, config, '--out', out)
    assert cv2.imread(str(out)).shape == (28 + 48, 4 * 48, 3)
    error = _failing_tool('visualize_features.py', image, config, '--size', 64, 64)
    assert error.endswith('--size 64 64: the backbone takes only 48 x 48 inputs (a timm model '
                          'built with that img_size; build it with dynamic_img_size=True for '
                          'others); use --size 48 48')


def test_tools_refuse_sizes_the_backbone_grid_does_not_tile(image, tmp_path):
    """ConvNeXt covers 2.5 of its stride-32 cells of an 80 px image, as 2: it was stretched
    over the whole image without a word."""
    config = _timm_config(tmp_path, CONVNEXT)
    out = tmp_path / 'features.png'
    run_tool('visualize_features.py', image, config, '--out', out)  # crop_size 80 -> 64
    assert cv2.imread(str(out)).shape == (28 + 64, 4 * 64, 3)
    error = _failing_tool('visualize_features.py', image, config, '--size', 80, 96)
    assert 'use a multiple of 32, e.g. --size 64 96 or --size 96 96' in error
    error = _failing_tool('implicit_featup.py', image, config, '--fit-size', 80, 96, '--out',
                          tmp_path)
    assert 'use a multiple of 32, e.g. --fit-size 64 96 or --fit-size 96 96' in error
