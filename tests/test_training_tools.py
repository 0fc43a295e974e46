"""The command-line tools end to end on the embedded synthetic dataset: training, resume,
testing, distributed training, the demo, and FLOP counting."""
import re

import cv2
import numpy as np
import pytest
from helpers import ROOT, run_tool, run_torchrun
from mmengine.runner.checkpoint import CheckpointLoader

from featup_mmseg.datasets import generate_synthetic_shapes
from featup_mmseg.datasets.synthetic_shapes import CLASSES

DEMO_JBU = ROOT / 'configs/demo/segformer_mit-b0_featup-jbu_synthetic-128x128.py'
ADE = ROOT / 'configs/featup_segformer'


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return generate_synthetic_shapes(tmp_path_factory.mktemp('synthetic'), num_train=16,
                                     num_val=4)


def _small_run(data_root, iters, checkpoint_interval):
    """--cfg-options for a short CPU run on the small dataset."""
    options = [
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={checkpoint_interval}',
        'train_dataloader.batch_size=2'
    ]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={data_root}', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False']
    return ['--cfg-options', *options]


def test_synthetic_dataset_layout_and_edges(data_root):
    for split, count in (('training', 16), ('validation', 4)):
        images = sorted((data_root / 'images' / split).glob('*.jpg'))
        labels = sorted((data_root / 'annotations' / split).glob('*.png'))
        assert len(images) == len(labels) == count
        assert [p.stem for p in images] == [p.stem for p in labels]
    image = cv2.imread(str(images[0])).astype(np.float32)
    label = cv2.imread(str(labels[0]), cv2.IMREAD_UNCHANGED)
    assert label.dtype == np.uint8 and image.shape[:2] == label.shape
    assert 0 not in label and label.max() <= len(CLASSES)  # ADE: 0 unused, class c as c + 1
    # class boundaries are visible edges: the image changes much more across them
    across = (label[:, 1:] != label[:, :-1])
    step = np.abs(image[:, 1:] - image[:, :-1]).sum(-1)
    assert across.any() and step[across].mean() > 3 * step[~across].mean()


def test_train_resume_and_test_tools(data_root, tmp_path):
    work_dir = tmp_path / 'run'
    run_tool('train.py', DEMO_JBU, '--work-dir', work_dir, *_small_run(data_root, 2, 2))
    assert (work_dir / 'iter_2.pth').exists()
    resumed = run_tool('train.py', DEMO_JBU, '--work-dir', work_dir, '--resume',
                       *_small_run(data_root, 4, 2))
    log = resumed.stdout + resumed.stderr
    assert f'Auto resumed from the latest checkpoint {work_dir}/iter_2.pth' in log
    assert 'resumed epoch: 0, iter: 2' in log
    checkpoint = CheckpointLoader.load_checkpoint(str(work_dir / 'iter_4.pth'))
    assert checkpoint['meta']['iter'] == 4
    # the message hub's HistoryBuffers are what torch's weights_only loader refuses
    assert len(checkpoint['message_hub']['log_scalars']['train/loss'].data[0]) == 4

    tested = run_tool('test.py', DEMO_JBU, work_dir / 'iter_4.pth', '--work-dir',
                      tmp_path / 'test', *_small_run(data_root, 4, 2))
    assert re.search(r'Iter\(test\) \[\d+/\d+\].*mIoU: [\d.]+', tested.stdout + tested.stderr)


def test_distributed_training_on_two_processes(data_root, tmp_path):
    work_dir = tmp_path / 'dist'
    result = run_torchrun('train.py', DEMO_JBU, '--launcher', 'pytorch', '--work-dir', work_dir,
                          *_small_run(data_root, 2, 2), port=29531)
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log and 'Saving checkpoint at 2 iterations' in log
    checkpoint = CheckpointLoader.load_checkpoint(str(work_dir / 'iter_2.pth'))
    assert any(k.startswith('decode_head.guided_stages.') for k in checkpoint['state_dict'])


def test_demo_end_to_end(data_root, tmp_path):
    result = run_tool('demo.py', '--iters', '2', '--work-dir', tmp_path, '--data-root',
                      data_root)
    assert re.search(r'bilinear\s+[\d.]+\s+[\d.]+\s+[\d.]+', result.stdout)
    assert re.search(r'FeatUp JBU\s+[\d.]+\s+[\d.]+\s+[\d.]+', result.stdout)
    figure = cv2.imread(str(tmp_path / 'featup_demo.png'))
    assert figure is not None and figure.shape[1] == 4 * 128 * 3  # four 128 px columns, x3


def test_get_flops_counts_the_compiled_ops():
    result = run_tool('get_flops.py', ADE / 'segformer_mit-b1_bilinear_8xb2-160k_ade20k-512x512.py',
                      ADE / 'segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512.py',
                      ADE / 'segformer_mit-b1_sapa_8xb2-160k_ade20k-512x512.py')
    # every compiled op has a handle (SAPA's similarity is adaptive_conv_backward_kernel)
    assert 'featup_mmseg::' not in result.stdout.split('not counted')[-1]
    rows = dict(re.findall(r'(segformer\S+)\s+[\d.]+\s+([\d.]+)', result.stdout))
    bilinear = float(rows['segformer_mit-b1_bilinear_8xb2-160k_ade20k-512x512'])
    jbu = float(rows['segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512'])
    assert round(bilinear, 1) == 16.0  # SegFormer-B1 at 512 x 512 (spec section 4)
    # six stages: 1 to 32 x 32, 2 to 64 x 64, 3 to 128 x 128, with 256 channels, k = 7:
    # range MLP 256*32 + 32*32, correlation 32*49, fixup (49+256)*49 + 49*49,
    # aggregation 256*49 and bicubic 16*256 multiply-adds per output pixel; the
    # bilinear head instead resizes c2..c4 (256 channels) to 128 x 128 (4 per element;
    # mmseg's SegformerHead also resizes c1 to its own size, an identity the head skips).
    per_pixel = 256 * 32 + 32 * 32 + 32 * 49 + (49 + 256) * 49 + 49 * 49 + 256 * 49 + 16 * 256
    pixels = 32 * 32 + 2 * 64 * 64 + 3 * 128 * 128
    expected = (per_pixel * pixels - 3 * 4 * 256 * 128 * 128) / 1e9
    assert jbu - bilinear == pytest.approx(expected, abs=0.011)


def test_get_flops_counts_the_neighbourhood_attention_ops():
    psp = ROOT / 'configs' / 'featup_pspnet'
    result = run_tool('get_flops.py', psp / 'pspnet_r50-d8_bilinear_4xb4-160k_ade20k-512x512.py',
                      psp / 'pspnet_r50-d8_naf-output_4xb4-160k_ade20k-512x512.py',
                      '--shape', '64', '64')
    assert 'featup_mmseg::' not in result.stdout.split('not counted')[-1]
    rows = dict(re.findall(r'(pspnet\S+)\s+[\d.]+\s+([\d.]+)', result.stdout))
    extra = float(rows['pspnet_r50-d8_naf-output_4xb4-160k_ade20k-512x512']) - \
        float(rows['pspnet_r50-d8_bilinear_4xb4-160k_ade20k-512x512'])
    # NAF from 8 x 8 to 64 x 64 (PSPHead's 512 channels, 81 taps, 4 heads of 64 encoding
    # channels) adds at least its attention: scores 256 and aggregation 512 multiply-adds
    # per tap and output pixel
    assert extra * 1e9 >= (256 + 512) * 81 * 64 * 64
