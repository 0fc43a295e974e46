"""Pretraining FeatUp on your own image folder and using the upsampled features: the
unlabelled folder dataset, the record of the backbone an upsampler was trained with, the
warnings for random or other backbones, and tools/extract_features.py."""
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from helpers import ROOT, run_tool
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, MODELS

import featup_mmseg.plugin  # noqa: F401
from featup_mmseg.models.backbone_record import backbone_fingerprint

PRETRAIN_DEMO = ROOT / 'configs/demo/vit-tiny_jbu-neck_featup-pretrain_synthetic-128x128.py'
OTHER_BACKBONE = 'was trained with another backbone'
RANDOM_BACKBONE = 'is randomly initialised'

init_default_scope('mmseg')


def _write_images(folder, names, size=(80, 96)):
    rng = np.random.default_rng(0)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp('my_images')
    _write_images(folder, ['a.jpg', 'b.PNG', 'trip/c.jpeg', 'trip/deeper/d.png'])
    (folder / 'notes.txt').write_text('not an image')
    return folder


# ----------------------------------------------------------------------------------------
# the folder dataset

def test_unlabelled_folder_lists_its_images_in_any_case_and_subfolder(images):
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]
    dataset = DATASETS.build(dict(type='UnlabelledImageFolder', data_root=str(images),
                                  pipeline=pipeline))
    paths = [info['img_path'] for info in dataset.load_data_list()]
    assert [p[len(str(images)) + 1:] for p in paths] == \
        ['a.jpg', 'b.PNG', 'trip/c.jpeg', 'trip/deeper/d.png']
    assert dataset[3]['inputs'].shape == (3, 80, 96)
    assert 'gt_sem_seg' not in dataset[0]['data_samples']
    flat = DATASETS.build(dict(type='UnlabelledImageFolder', data_root=str(images),
                               recursive=False, img_suffix='.jpg', pipeline=pipeline))
    assert len(flat) == 1
    with pytest.raises(FileNotFoundError, match=r'no image in .*trip.*\.bmp'):
        DATASETS.build(dict(type='UnlabelledImageFolder', data_root=str(images),
                            img_dir='trip', img_suffix='.bmp'))
    with pytest.raises(FileNotFoundError, match=r'no folder .*missing'):
        DATASETS.build(dict(type='UnlabelledImageFolder', data_root=str(images / 'missing')))
    with pytest.raises(ValueError, match=r'img_suffix must be a file ending'):
        DATASETS.build(dict(type='UnlabelledImageFolder', data_root=str(images), img_suffix=[]))


# ----------------------------------------------------------------------------------------
# the backbone an upsampler was trained with

def test_fingerprint_follows_the_weights_only():
    cfg = Config.fromfile(PRETRAIN_DEMO)
    torch.manual_seed(0)
    first = MODELS.build(cfg.model).backbone
    torch.manual_seed(0)
    same = MODELS.build(cfg.model).backbone
    assert backbone_fingerprint(first) == backbone_fingerprint(same)
    with torch.no_grad():
        same.patch_embed.projection.weight[0, 0, 0, 0] += 1e-6
    assert backbone_fingerprint(first) != backbone_fingerprint(same)


@pytest.fixture(scope='module')
def pretrained(images, tmp_path_factory):
    """Pretraining on the image folder twice: from a random backbone, and from a saved
    model (load_from): (work dir random, work dir loaded, the saved model, its result)."""
    root = tmp_path_factory.mktemp('pretrain')
    config = root / 'my_folder.py'
    config.write_text(
        f"_base_ = ['{PRETRAIN_DEMO}']\n"
        'train_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict('
        f"_delete_=True, type='UnlabelledImageFolder', data_root='{images}', pipeline=["
        "dict(type='LoadImageFromFile'), dict(type='Resize', scale=(64, 64), "
        "keep_ratio=False), dict(type='PackSegInputs')]))\n"
        "model = dict(data_preprocessor=dict(size=(64, 64)), backbone=dict(img_size=(64, 64)))\n"
        'custom_hooks = [dict(type="FeatUpPretrainHook", steps=2, images_per_step=2, '
        'max_pad=8, kernel_size=8)]\n')
    random_run = run_tool('pretrain_upsampler.py', config, '--work-dir', root / 'random')
    cfg = Config.fromfile(config)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict()), root / 'model.pth')
    run_tool('pretrain_upsampler.py', config, '--work-dir', root / 'loaded', '--cfg-options',
             f"load_from={root / 'model.pth'}")
    return config, root, random_run


def test_pretraining_warns_of_a_random_backbone_and_records_the_backbone(pretrained):
    config, root, random_run = pretrained
    assert RANDOM_BACKBONE in random_run.stdout + random_run.stderr
    model = torch.load(root / 'model.pth', weights_only=True)['state_dict']
    for run, weights in (('random', None), ('loaded', f"load_from={root / 'model.pth'}")):
        saved = torch.load(root / run / 'featup_pretrained_upsampler.pth', weights_only=True)
        record = saved['meta']['featup_pretrain']['backbone']
        assert record['type'] == 'VisionTransformer' and record['weights'] == weights
        assert "'type': 'VisionTransformer'" in record['config']
    backbone = MODELS.build(Config.fromfile(config).model).backbone
    backbone.load_state_dict({k[9:]: v for k, v in model.items() if k.startswith('backbone.')})
    assert record['fingerprint'] == backbone_fingerprint(backbone)


def test_a_resumed_run_records_the_checkpoint_it_resumes_from(tmp_path):
    # resume=True without load_from: mmengine resumes from the work_dir's latest checkpoint
    from types import SimpleNamespace

    from featup_mmseg.engine import FeatUpPretrainHook
    backbone = dict(type='VisionTransformer')
    runner = SimpleNamespace(work_dir=str(tmp_path),
                             cfg=Config(dict(model=dict(backbone=backbone), resume=True)))
    assert FeatUpPretrainHook._backbone_source(runner) == (backbone, None)
    (tmp_path / 'iter_4.pth').write_bytes(b'')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    assert FeatUpPretrainHook._backbone_source(runner) == (backbone,
                                                           str(tmp_path / 'iter_4.pth'))
    runner.cfg.load_from = 'model.pth'
    assert FeatUpPretrainHook._backbone_source(runner) == (backbone, 'model.pth')


def test_a_neck_pretrained_with_another_backbone_warns_at_the_first_forward(pretrained):
    config, root, _ = pretrained
    cfg = Config.fromfile(config)
    cfg.model.neck.init_cfg = dict(type='Pretrained', prefix='neck.',
                                   checkpoint=str(root / 'loaded/featup_pretrained_upsampler.pth'))
    image = torch.randn(1, 3, 64, 64)
    for load_backbone, expected in ((False, True), (True, False)):
        model = MODELS.build(cfg.model)
        model.init_weights()
        if load_backbone:  # the runner's load_from comes after init_weights
            state = torch.load(root / 'model.pth', weights_only=True)['state_dict']
            model.load_state_dict({k: v for k, v in state.items() if k.startswith('backbone.')},
                                  strict=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            model.extract_feat(image)
            model.extract_feat(image)  # checked once
        messages = [str(w.message) for w in caught if OTHER_BACKBONE in str(w.message)]
        assert len(messages) == int(expected), messages


# ----------------------------------------------------------------------------------------
# tools/extract_features.py

def test_extract_features_of_a_folder_and_a_glob(pretrained, images, tmp_path):
    config, root, _ = pretrained
    upsampler = root / 'loaded/featup_pretrained_upsampler.pth'
    out = tmp_path / 'features'
    result = run_tool('extract_features.py', images, config, '--upsampler', upsampler,
                      '--checkpoint', root / 'model.pth', '--out', out, '--pca',
                      '--batch-size', '3')
    assert OTHER_BACKBONE not in result.stderr and RANDOM_BACKBONE not in result.stderr
    names = ['a', 'b', 'trip/c', 'trip/deeper/d']
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob('*.pt')) == \
        [n + '.pt' for n in names]
    saved = torch.load(out / 'trip/c.pt', weights_only=True)
    assert saved['features'].shape == (64, 64, 64) and saved['low_res'].shape == (64, 4, 4)
    assert saved['features'].dtype == torch.float32 and saved['method'] == 'JBUNeck'
    assert cv2.imread(str(out / 'trip/c_pca.png')).shape[0] > 64

    # the same image alone, unbatched, gives the same features: batching changes nothing
    cfg = Config.fromfile(config)
    model = MODELS.build(cfg.model).eval()
    model.load_state_dict(torch.load(root / 'model.pth', weights_only=True)['state_dict'])
    model.neck.load_pretrained(str(upsampler), 'neck.')
    bgr = cv2.resize(cv2.imread(str(images / 'trip/c.jpeg')), (64, 64),
                     interpolation=cv2.INTER_AREA)
    inputs = model.data_preprocessor(dict(inputs=[torch.from_numpy(bgr).permute(2, 0, 1)]),
                                     False)['inputs']
    with torch.no_grad():
        expected = model.neck.upsample(model.neck.select(model.backbone(inputs)), inputs)
    torch.testing.assert_close(saved['features'], expected[0], atol=1e-5, rtol=1e-5)

    # a glob, float16 .npy, without the backbone it was trained with: warned
    result = run_tool('extract_features.py', f'{images}/trip/**/*.png', config, '--upsampler',
                      upsampler, '--out', tmp_path / 'npy', '--format', 'npy', '--half')
    assert OTHER_BACKBONE in result.stderr and RANDOM_BACKBONE in result.stderr
    features = np.load(tmp_path / 'npy/d.npy')
    assert features.dtype == np.float16 and features.shape == (64, 64, 64)
    assert np.load(tmp_path / 'npy/d_low_res.npy').shape == (64, 4, 4)


def test_extract_features_implicit_and_colliding_names(images, tmp_path):
    _write_images(tmp_path / 'two', ['x.jpg', 'x.png'], size=(32, 32))
    run_tool('extract_features.py', tmp_path / 'two', PRETRAIN_DEMO, '--implicit', '--preset',
             'fast', '--steps', '2', '--size', '64', '64', '--out', tmp_path / 'out')
    for name in ('x.jpg', 'x.png'):
        saved = torch.load(tmp_path / f'out/{name}.pt', weights_only=True)
        assert saved['method'] == 'implicit' and saved['features'].shape == (64, 64, 64)


@pytest.mark.parametrize('args, message', [
    (['{images}/nothing-*.jpg'], 'INPUT {images}/nothing-*.jpg: the pattern matches no image'),
    (['{images}/notes.txt'], 'INPUT {images}/notes.txt: not an image'),
    (['{images}/missing.jpg'], 'INPUT {images}/missing.jpg'),
    (['{images}', '--size', '60', '60'], 'use a multiple of 16'),
    (['{images}', '--batch-size', '0'], '--batch-size must be at least 1'),
])
def test_extract_features_refuses_bad_arguments_before_work(images, tmp_path, args, message):
    args = [a.format(images=images) for a in args]
    result = subprocess.run([sys.executable, str(ROOT / 'tools/extract_features.py'), args[0],
                             str(PRETRAIN_DEMO), '--out', str(tmp_path / 'out'), *args[1:]],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert message.format(images=images) in result.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / 'out').rglob('*.pt')) if (tmp_path / 'out').exists() else True
