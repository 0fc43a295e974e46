"""The linear-probe protocols of configs/featup_probe: COCO-Stuff-27 labels from both label
layouts, the upsampling neck, and every config training its probe alone on tiny data."""
import copy
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmseg.registry import DATASETS, MODELS
from PIL import Image

import featup_mmseg.plugin  # noqa: F401
from featup_mmseg.datasets.coco_stuff27 import COARSE_CLASSES, coarse_label_map
from featup_mmseg.models.image_guidance import guided_segmentor_build

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / 'configs/featup_probe').glob('*.py'))
init_default_scope('mmseg')

# facts of COCO-Stuff 164k: fine ids 0 person, 1 bicycle, 10 traffic light, 12 stop sign,
# 156 sky-other, 181 wood; mmseg's converter skips the unannotated ids 11, ..., 90
PERSON, BICYCLE, TRAFFIC_LIGHT, STOP_SIGN, SKY, WOOD = 0, 1, 10, 12, 156, 181
MMSEG_TRAIN_IDS = {PERSON: 0, BICYCLE: 1, TRAFFIC_LIGHT: 10, STOP_SIGN: 11, SKY: 145,
                   WOOD: 170}
COARSE = {PERSON: 'person-things', BICYCLE: 'vehicle-things', TRAFFIC_LIGHT: 'outdoor-things',
          STOP_SIGN: 'outdoor-things', SKY: 'sky-stuff', WOOD: 'solid-stuff'}


def test_label_maps_cover_each_layout_onto_the_27_classes():
    assert len(COARSE_CLASSES) == 27 and len(set(COARSE_CLASSES)) == 27
    for layout, size in (('stuffthingmaps', 182), ('mmseg', 171)):
        mapping = coarse_label_map(layout)
        assert sorted(mapping) == list(range(size))  # 255 is not mapped: it stays 255
        assert sorted(set(mapping.values())) == list(range(27))
    fine, mmseg = coarse_label_map('stuffthingmaps'), coarse_label_map('mmseg')
    for fine_id, name in COARSE.items():
        assert COARSE_CLASSES[fine[fine_id]] == name
        assert COARSE_CLASSES[mmseg[MMSEG_TRAIN_IDS[fine_id]]] == name


def _write_sample(root, split, name, label, seg_suffix):
    """An image and its label png in mmseg's COCO-Stuff 164k folders."""
    for folder in ('images', 'annotations'):
        (root / folder / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    image = rng.integers(0, 255, (*label.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / 'images' / split / f'{name}.jpg')
    label_path = root / 'annotations' / split / f'{name}{seg_suffix}'
    Image.fromarray(label.astype(np.uint8)).save(label_path)


@pytest.mark.parametrize('layout, seg_suffix', [('stuffthingmaps', '.png'),
                                                ('mmseg', '_labelTrainIds.png')])
def test_label_files_load_as_coarse_classes(tmp_path, layout, seg_suffix):
    fine_ids = list(COARSE)
    values = fine_ids if layout == 'stuffthingmaps' else [MMSEG_TRAIN_IDS[i] for i in fine_ids]
    label = np.array([values + [255], [255] + values[::-1]]).repeat(3, axis=0)
    _write_sample(tmp_path, 'train2017', '000000000001', label, seg_suffix)
    dataset = DATASETS.build(dict(
        type='COCOStuff27Dataset', label_layout=layout, seg_map_suffix=seg_suffix,
        data_root=str(tmp_path),
        data_prefix=dict(img_path='images/train2017', seg_map_path='annotations/train2017'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]))
    assert len(dataset) == 1 and dataset.metainfo['classes'] == COARSE_CLASSES
    loaded = dataset[0]['gt_seg_map']
    coarse = [COARSE_CLASSES.index(COARSE[i]) for i in fine_ids]
    expected = np.array([coarse + [255], [255] + coarse[::-1]]).repeat(3, axis=0)
    np.testing.assert_array_equal(loaded, expected)


def test_dataset_refuses_unknown_layouts_and_other_classes():
    with pytest.raises(ValueError, match='label_layout must be one of'):
        DATASETS.build(dict(type='COCOStuff27Dataset', label_layout='fine', lazy_init=True))
    with pytest.raises(ValueError, match='27 coarse classes'):
        DATASETS.build(dict(type='COCOStuff27Dataset', lazy_init=True,
                            metainfo=dict(classes=COARSE_CLASSES[:3])))


# ----------------------------------------------------------------------------------------
# the upsampling neck

def _neck(**kwargs):
    with guided_segmentor_build():
        return MODELS.build(dict(type='FeatureUpsamplingNeck', in_channels=8, **kwargs))


def test_neck_upsamples_by_interpolation_or_a_stack_of_guided_stages():
    torch.manual_seed(0)
    features, image = torch.randn(2, 8, 4, 4), torch.randn(2, 3, 64, 64)
    other = torch.randn(2, 5, 2, 2)
    bilinear = _neck()
    out = bilinear([other, features], image)
    assert out[0] is other
    torch.testing.assert_close(out[1], torch.nn.functional.interpolate(
        features, size=(64, 64), mode='bilinear', align_corners=False))
    carafe = _neck(upsampler=dict(type='CARAFE', up_kernel=3), num_stages=3, out_stride=2)
    calls = []
    for stage in carafe.upsampler:
        stage.register_forward_hook(lambda m, args, out: calls.append(
            (tuple(args[0].shape[-2:]), tuple(args[1].shape[1:]), tuple(out.shape[-2:]))))
    assert carafe([features], image)[0].shape == (2, 8, 32, 32)
    # x2 per stage, each guided by the image pooled to the stage's size
    assert calls == [((4, 4), (3, 8, 8), (8, 8)), ((8, 8), (3, 16, 16), (16, 16)),
                     ((16, 16), (3, 32, 32), (32, 32))]


def test_neck_stage_sizes_follow_x2_steps_to_the_image():
    sizes = []
    neck = _neck(upsampler=dict(type='SAPA'), num_stages=4)
    for stage in neck.upsampler:
        stage.register_forward_hook(lambda m, args, out: sizes.append(tuple(out.shape[-2:])))
    assert neck([torch.randn(1, 8, 4, 4)], torch.randn(1, 3, 64, 64))[0].shape[-2:] == (64, 64)
    assert sizes == [(8, 8), (16, 16), (32, 32), (64, 64)]


def test_frozen_necks_stay_in_eval_mode_without_gradients():
    neck = _neck(upsampler=dict(type='ResizeConv'), num_stages=2, frozen=True)
    neck.train()
    assert not neck.training and not any(p.requires_grad for p in neck.parameters())
    with guided_segmentor_build():
        jbu = MODELS.build(dict(type='JBUNeck', in_channels=8, frozen=True))
    jbu.train()
    assert not jbu.training and not any(m.training for m in jbu.modules())
    assert not any(p.requires_grad for p in jbu.parameters())
    with guided_segmentor_build():
        trainable = MODELS.build(dict(type='JBUNeck', in_channels=8))
    assert trainable.train().training and all(p.requires_grad for p in trainable.parameters())


@pytest.mark.parametrize('kwargs, match', [
    (dict(upsampler=dict(type='carafe')), "did you mean 'CARAFE'"),
    (dict(frozen='yes'), 'frozen must be a bool'),
    (dict(in_index='-1'), 'in_index must be the index'),
])
def test_neck_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _neck(**kwargs)


def test_neck_refuses_a_level_of_other_channels():
    with pytest.raises(ValueError, match='set neck.in_channels=6'):
        _neck()([torch.randn(1, 6, 4, 4)], torch.randn(1, 3, 16, 16))


# ----------------------------------------------------------------------------------------
# every config trains its probe alone

SIZE, NUM_IMAGES = 64, 4
CURATED = 'curated/train2017/Coco164kFull_Stuff_Coarse.txt'  # STEGO's image list
DATASET_TYPES = {'coco-stuff27': 'COCOStuff27Dataset', 'voc12': 'PascalVOCDataset',
                 'ade20k': 'ADE20KDataset', 'cityscapes': 'CityscapesDataset'}


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    """A few images in mmseg's COCO-Stuff 164k layout whose coarse labels exist in every
    protocol's class count (below 19)."""
    root = tmp_path_factory.mktemp('coco_stuff164k')
    rng = np.random.default_rng(0)
    train_ids = np.array([MMSEG_TRAIN_IDS[i] for i in (PERSON, BICYCLE, TRAFFIC_LIGHT)] + [255])
    for index in range(NUM_IMAGES):
        label = train_ids[rng.integers(0, len(train_ids), (9, 10))].repeat(8, 0).repeat(8, 1)
        _write_sample(root, 'train2017', f'{index:012d}', label, '_labelTrainIds.png')
    (root / CURATED).parent.mkdir(parents=True)
    (root / CURATED).write_text(''.join(f'{index:012d}\n' for index in range(NUM_IMAGES)))
    return root


RUNNER_KEYS = ('model', 'work_dir', 'train_dataloader', 'train_cfg', 'optim_wrapper',
               'param_scheduler', 'default_hooks', 'custom_hooks', 'env_cfg', 'log_processor',
               'visualizer', 'default_scope', 'launcher')


@functools.lru_cache(maxsize=None)
def _loaded(path):
    return Config.fromfile(path)


def _config(path):
    """A copy of the config at ``path`` (each is parsed once)."""
    return copy.deepcopy(_loaded(path))


class _Snapshot(Hook):
    """The model's state when training starts (after init_weights), and at its end."""

    def before_train(self, runner):
        self.before = copy.deepcopy(runner.model.state_dict())

    def after_train(self, runner):
        self.after = runner.model.state_dict()
        self.modes = {name: m.training for name, m in runner.model.named_children()}


def _small(cfg, work_dir, data_root):
    """The config on the tiny dataset: its pipelines, losses, optimiser and loop types,
    with a one-block backbone at SIZE px, no weight files, and no validation."""
    cfg.work_dir = str(work_dir)
    patch = 16 if 'patch16' in cfg.model.backbone.model_name else 14
    size = SIZE if patch == 16 else 56
    cfg.model.backbone.update(checkpoint=None, img_size=(size, size), model_kwargs=dict(depth=1))
    cfg.model.neck.pop('init_cfg', None)
    cfg.model.data_preprocessor.size = (size, size)
    cfg.model.test_cfg.update(crop_size=(size, size), stride=(size, size))
    pipeline = copy.deepcopy(cfg.train_dataloader.dataset.pipeline)
    for step in pipeline:
        if step['type'] == 'ResizeShortestEdge':
            step['scale'] = size
        if step['type'] == 'CenterCrop':
            step['crop_size'] = (size, size)
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset = dict(
        type='COCOStuff27Dataset', data_root=str(data_root), ann_file=CURATED,
        data_prefix=dict(img_path='images/train2017', seg_map_path='annotations/train2017'),
        pipeline=pipeline,
        reduce_zero_label=any(step.get('reduce_zero_label', False) for step in pipeline))
    if cfg.train_cfg.type == 'IterBasedTrainLoop':
        cfg.train_cfg.update(max_iters=2, val_interval=100)
    else:
        cfg.train_cfg.update(max_epochs=1, val_interval=100)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator'):
        cfg[key] = None
    cfg.default_hooks.checkpoint.interval = 100
    cfg.default_hooks.logger.interval = 1
    return cfg


def test_every_probe_config_is_listed_and_names_its_dataset():
    assert len(CONFIGS) == 21
    for path in CONFIGS:
        cfg = _config(path)
        dataset = next(key for key in DATASET_TYPES if f'_{key}-' in path.name)
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            assert cfg[loader].dataset.type == DATASET_TYPES[dataset], path.name
        assert cfg.model.decode_head.num_convs == 0 and cfg.model.decode_head.kernel_size == 1
        assert cfg.model.backbone.frozen and cfg.model.neck.frozen, path.name


@pytest.mark.parametrize('path', [p for p in CONFIGS if 'bilinear' in p.name],
                         ids=lambda p: p.stem)
def test_configs_score_their_centre_crop(path, coco_root):
    """The test pipeline crops image and label alike and makes the crop the image mmseg
    resizes its predictions to (its ori_shape)."""
    pipeline = copy.deepcopy(_config(path).test_dataloader.dataset.pipeline)
    crop = next(step for step in pipeline if step['type'] == 'CenterCrop')
    crop['crop_size'] = (48, 40)  # mmcv's (width, height)
    size = (40, 48)
    next(step for step in pipeline if step['type'] == 'ResizeShortestEdge')['scale'] = 56
    dataset = DATASETS.build(dict(
        type='COCOStuff27Dataset', data_root=str(coco_root), ann_file=CURATED,
        data_prefix=dict(img_path='images/train2017', seg_map_path='annotations/train2017'),
        pipeline=pipeline))
    sample = dataset[0]['data_samples']
    assert sample.ori_shape == size and sample.gt_sem_seg.data.shape[-2:] == size
    assert sample.img_shape == size


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_trains_only_its_probe(path, coco_root, tmp_path):
    torch.manual_seed(0)
    cfg = _small(_config(path), tmp_path, coco_root)
    # Runner.from_cfg's arguments, without the config text it formats for the log (slow)
    runner = Runner(**{key: cfg[key] for key in RUNNER_KEYS if cfg.get(key) is not None},
                    randomness=dict(seed=0))
    snapshot = _Snapshot()
    runner.register_hook(snapshot)
    runner.train()
    assert not snapshot.modes['backbone'] and not snapshot.modes['neck']
    assert snapshot.modes['decode_head']
    changed = {key for key, value in snapshot.after.items()
               if not torch.equal(value, snapshot.before[key])}
    assert changed == {'decode_head.conv_seg.weight', 'decode_head.conv_seg.bias'}
