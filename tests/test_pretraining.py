"""FeatUp's multi-view pretraining: views, downsamplers, the hook, its tools."""
import cv2
import pytest
import torch
from helpers import ROOT, run_tool, run_torchrun
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader
from mmseg.registry import HOOKS, MODELS

import featup_mmseg.plugin  # noqa: F401
from featup_mmseg.engine import FeatUpPretrainHook
from featup_mmseg.engine.hooks import find_targets
from featup_mmseg.datasets import generate_synthetic_shapes
from featup_mmseg.layers import (AttentionDownsampler, Jitter, ReconstructionCriterion,
                                 SimpleDownsampler, build_downsampler, sample_jitter)
from featup_mmseg.models.image_guidance import guided_segmentor_build

PRETRAIN_DEMO = ROOT / 'configs/demo/vit-tiny_jbu-neck_featup-pretrain_synthetic-128x128.py'
PRETRAIN_FEATUP = ROOT / 'configs/featup_pretrain/vit-s16_featup-jbu-pretrain_224px.py'
JBU_DEMO = ROOT / 'configs/demo/segformer_mit-b0_featup-jbu_synthetic-128x128.py'
BILINEAR_DEMO = ROOT / 'configs/demo/segformer_mit-b0_bilinear_synthetic-128x128.py'

init_default_scope('mmseg')


# ----------------------------------------------------------------------------------------
# views

def test_known_jitters():
    x = torch.randn(2, 3, 20, 24, dtype=torch.float64)
    assert torch.equal(Jitter(pad=4, zoom=1.0, top=4, left=4, flip=False)(x), x)
    assert torch.equal(Jitter(pad=0, zoom=1.0, top=0, left=0, flip=True)(x), x.flip(-1))
    shifted = Jitter(pad=3, zoom=1.0, top=0, left=6, flip=False)(x)
    padded = torch.nn.functional.pad(x, [3] * 4, mode='reflect')
    assert torch.equal(shifted, padded[..., 0:20, 6:30])


def test_a_jitter_moves_image_and_features_identically():
    image = torch.randn(2, 3, 32, 40, dtype=torch.float64)
    to_features = torch.nn.Conv2d(3, 16, 1).double()  # per-pixel features of the image
    for jitter in (Jitter(pad=5, zoom=1.6, top=9, left=3, flip=True),
                   Jitter(pad=2, zoom=1.0, top=1, left=4, flip=False)):
        with torch.no_grad():
            torch.testing.assert_close(jitter(to_features(image)), to_features(jitter(image)))
        assert jitter(image).shape == image.shape


def test_sampled_jitters_follow_the_spec():
    gen = torch.Generator().manual_seed(0)
    jitters = [sample_jitter(64, 48, max_pad=10, max_zoom=2.0, generator=gen)
               for _ in range(400)]
    zoomed = [j for j in jitters if j.zoom != 1.0]
    assert 140 < len(zoomed) < 260 and 140 < sum(j.flip for j in jitters) < 260
    assert all(1.0 < j.zoom <= 2.0 for j in zoomed) and max(j.zoom for j in zoomed) > 1.8
    for j in jitters:
        assert j.pad == 10
        assert 0 <= j.top <= round(84 * j.zoom) - 64 and 0 <= j.left <= round(68 * j.zoom) - 48
    with pytest.raises(ValueError, match=r'max_pad 64 must be smaller than the image size'):
        sample_jitter(64, 80, max_pad=64, max_zoom=2.0)


@pytest.mark.parametrize('call, message', [
    (lambda: sample_jitter(64, 64, max_pad=4, max_zoom=0.5),
     r'sample_jitter: max_zoom must be a finite number >= 1.0, got 0.5'),
    (lambda: sample_jitter(64, 64, max_pad=-1, max_zoom=2.0),
     r'sample_jitter: max_pad must be an integer >= 0, got -1'),
    (lambda: Jitter(pad=2, zoom=0.8, top=0, left=0, flip=False),
     r'Jitter: zoom must be a finite number >= 1.0, got 0.8'),
    (lambda: Jitter(pad=-2, zoom=1.0, top=0, left=0, flip=False),
     r'Jitter: pad must be an integer >= 0, got -2'),
    (lambda: Jitter(pad=2, zoom=1.0, top=-1, left=0, flip=False),
     r'Jitter: top must be an integer >= 0, got -1'),
    (lambda: Jitter(pad=2, zoom=1.0, top=5, left=0, flip=False)(torch.randn(1, 3, 8, 8)),
     r'Jitter: a \(8, 8\) crop at \(top, left\) = \(5, 0\) does not fit the padded and '
     r'zoomed input \(12, 12\)'),
    (lambda: Jitter(pad=8, zoom=1.0, top=0, left=0, flip=False)(torch.randn(1, 3, 8, 8)),
     r'Jitter: pad 8 must be smaller than the input size \(8, 8\)'),
    (lambda: ReconstructionCriterion(8, proj_dim=0),
     r'ReconstructionCriterion: proj_dim must be an integer >= 1, got 0'),
    (lambda: ReconstructionCriterion(8, downsampler='max'),
     r"ReconstructionCriterion: downsampler must be one of \('attention', 'simple'\)"),
    (lambda: ReconstructionCriterion(0), r'ReconstructionCriterion: feat_dim must be an '
     r'integer >= 1, got 0'),
    (lambda: ReconstructionCriterion(8, tv_weight=-1), r'tv_weight must be a finite number '
     r'>= 0.0, got -1'),
    (lambda: build_downsampler('max', 8, 16), r"build_downsampler: kind must be one of"),
    (lambda: SimpleDownsampler(0), r'SimpleDownsampler: kernel_size must be an integer >= 1'),
    (lambda: AttentionDownsampler(8, kernel_size=-3),
     r'AttentionDownsampler: kernel_size must be an integer >= 1, got -3'),
])
def test_bad_view_and_objective_arguments_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------------------
# downsamplers

@pytest.mark.parametrize('input_size, output_size, kernel_size', [
    ((224, 224), (14, 14), 16), ((128, 96), (8, 6), 16), ((50, 37), (7, 5), 7),
    ((33, 40), (1, 3), 5),
])
def test_downsamplers_reach_the_target_size_with_normalised_kernels(input_size, output_size,
                                                                   kernel_size):
    features = torch.randn(2, 6, *input_size)
    simple = SimpleDownsampler(kernel_size)
    attention = AttentionDownsampler(6, kernel_size).eval()
    with torch.no_grad():
        simple.kernel_params.copy_(torch.randn(kernel_size, kernel_size))  # signs too
        attention.w.mul_(3.0)
    for downsampler in (simple, attention):
        assert downsampler(features, output_size).shape == (2, 6, *output_size)
        # normalised kernels keep a constant map constant
        constant = torch.full((1, 6, *input_size), 2.5)
        torch.testing.assert_close(downsampler(constant, output_size),
                                   torch.full((1, 6, *output_size), 2.5))
    kernel = simple.kernel()
    assert (kernel >= 0).all() and torch.isclose(kernel.sum(), torch.tensor(1.0))
    weights = attention.attention(features, output_size)
    assert weights.shape == (2, kernel_size**2, *output_size) and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(2, *output_size))


# ----------------------------------------------------------------------------------------
# the hook

def _model(config):
    cfg = Config.fromfile(config)
    cfg.model.get('backbone', {}).pop('init_cfg', None)
    return MODELS.build(cfg.model)


def test_hook_finds_the_upsamplers_and_rejects_models_without():
    neck_target, = find_targets(_model(PRETRAIN_DEMO), 'auto')
    assert neck_target.name == 'neck' and neck_target.feat_dims == [64]
    head_target, = find_targets(_model(JBU_DEMO), 'auto')
    assert head_target.name == 'decode_head' and head_target.reconstructed == [1, 2, 3]
    with pytest.raises(ValueError, match=r"target='neck'.*no learned upsampler to pretrain"):
        find_targets(_model(JBU_DEMO), 'neck')
    with pytest.raises(ValueError, match=r"target='auto'.*no learned upsampler to pretrain"):
        find_targets(_model(BILINEAR_DEMO), 'auto')
    with pytest.raises(ValueError, match=r"target must be one of .*'backbone'"):
        HOOKS.build(dict(type='FeatUpPretrainHook', target='backbone'))
    featup_setting = Config.fromfile(PRETRAIN_FEATUP).custom_hooks[0]
    hook = HOOKS.build(featup_setting)
    assert (hook.steps, hook.images_per_step, hook.num_jitters, hook.max_pad, hook.max_zoom) == (
        2000, 4, 2, 30, 2.0)
    assert hook.criterion_cfg == dict(downsampler='attention', kernel_size=16, proj_dim=30,
                                      uncertainty=True, tv_weight=0.0)
    assert hook.optimizer_cfg == dict(type='NAdam', lr=1e-3)
    assert isinstance(_model(PRETRAIN_FEATUP).neck.upsampler.up4, torch.nn.Module)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return generate_synthetic_shapes(tmp_path_factory.mktemp('synthetic'), num_train=16,
                                     num_val=4)


def _data_options(data_root, *extra):
    options = [f'{name}.dataset.data_root={data_root}'
               for name in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options += ['train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
                'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
                'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']
    return ['--cfg-options', *options, *extra]


def test_pretraining_saves_weights_a_jbu_neck_loads(data_root, tmp_path):
    run_tool('pretrain_upsampler.py', PRETRAIN_DEMO, '--work-dir', tmp_path,
             *_data_options(data_root, 'custom_hooks.0.steps=3'))
    saved = CheckpointLoader.load_checkpoint(str(tmp_path / 'featup_pretrained_upsampler.pth'))
    assert len(saved['meta']['featup_pretrain']['losses']) == 3
    # loads strictly into a JBUNeck, as its init_cfg would
    model = _model(PRETRAIN_DEMO)
    model.neck.load_pretrained(str(tmp_path / 'featup_pretrained_upsampler.pth'), 'neck.')
    torch.testing.assert_close(model.neck.upsampler.up2.range_temp,
                               saved['state_dict']['neck.upsampler.up2.range_temp'])
    assert model.neck.upsampler.up2.range_temp.item() != 0.0  # moved from its init


def _demo_runner(data_root, work_dir, steps, size):
    cfg = Config.fromfile(PRETRAIN_DEMO)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = work_dir.name
    cfg.custom_hooks[0].steps = steps
    cfg.model.data_preprocessor.size = cfg.model.backbone.img_size = (size, size)
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[name].dataset.data_root = str(data_root)
        cfg[name].num_workers, cfg[name].persistent_workers = 0, False
    runner = Runner.from_cfg(cfg)  # seeded by the config: the same model and data order
    hook, = [h for h in runner.hooks if isinstance(h, FeatUpPretrainHook)]
    return runner, hook


def test_pretrained_upsampler_beats_its_frozen_initialisation(tmp_path):
    """Two runs equal in everything (seeds, images, views, projections, dropout, the
    downsampler and uncertainty network learning) except that one run's upsampler stays
    frozen at its initialisation: the trained upsampler must reconstruct the views better.
    (The loss falls in both runs; with a frozen upsampler their losses would be equal.)"""
    steps, size = 12, 64  # 64 px images keep it short on a CPU
    data_root = generate_synthetic_shapes(tmp_path / 'data', num_train=8, num_val=2, size=size)
    losses = {}
    for frozen in (False, True):
        runner, hook = _demo_runner(data_root, tmp_path / f'frozen_{frozen}', steps, size)
        runner.model.neck.upsampler.requires_grad_(not frozen)
        torch.manual_seed(0)  # the same views, projections and dropout in both runs
        losses[frozen] = hook.pretrain(runner)
    trained, frozen = losses[False], losses[True]
    assert trained[0] == frozen[0]  # the same start
    # paired over the second half, once training has moved the upsampler (about 0.017 here)
    gains = [f - t for t, f in zip(trained[steps // 2:], frozen[steps // 2:])]
    assert sum(gains) / len(gains) > 0.005, (trained, frozen)


def test_stacks_of_baseline_upsamplers_pretrain_and_frozen_or_bilinear_necks_are_refused(
        tmp_path):
    """FeatUp's Table 1 baselines learn with the same objective: a FeatureUpsamplingNeck's
    stack of CARAFE stages pretrains; a bilinear or frozen neck has nothing to learn."""
    data_root = generate_synthetic_shapes(tmp_path / 'data', num_train=4, num_val=1, size=64)
    runner, hook = _demo_runner(data_root, tmp_path / 'carafe', 2, 64)
    carafe = dict(type='FeatureUpsamplingNeck', in_channels=64, num_stages=4,
                  upsampler=dict(type='CARAFE', up_kernel=3))
    with guided_segmentor_build():
        runner.model.neck = MODELS.build(carafe)
    before = {k: v.clone() for k, v in runner.model.neck.state_dict().items()}
    assert len(hook.pretrain(runner)) == 2
    saved = torch.load(tmp_path / 'carafe/featup_pretrained_upsampler.pth', weights_only=True)
    assert set(saved['state_dict']) == {'neck.' + k for k in before}
    assert any(not torch.equal(before[k], saved['state_dict']['neck.' + k]) for k in before)
    for neck, match in ((dict(carafe, frozen=True), 'neck is frozen'),
                        (dict(carafe, upsampler=dict(type='bilinear')),
                         'no learned upsampler to pretrain')):
        with guided_segmentor_build():
            runner.model.neck = MODELS.build(neck)
        with pytest.raises(ValueError, match=match):
            find_targets(runner.model, 'auto')


def test_head_stages_pretrain_against_frozen_projections(data_root, tmp_path):
    config = tmp_path / 'head_pretrain.py'
    config.write_text(f"_base_ = ['{JBU_DEMO}']\n"
                      "custom_hooks = [dict(type='FeatUpPretrainHook', steps=3)]\n")
    run_tool('pretrain_upsampler.py', config, '--work-dir', tmp_path, *_data_options(data_root))
    saved = CheckpointLoader.load_checkpoint(str(tmp_path / 'featup_pretrained_upsampler.pth'))
    stages = _model(JBU_DEMO).decode_head.guided_stages
    assert set(saved['state_dict']) == {'decode_head.guided_stages.' + k
                                        for k in stages.state_dict()}
    assert saved['meta']['featup_pretrain']['targets'] == ['decode_head']
    assert len(saved['meta']['featup_pretrain']['losses']) == 3


def test_training_runs_the_hook_once_and_resume_skips_it(data_root, tmp_path):
    options = ['custom_hooks.0.steps=3', 'train_cfg.max_iters=2', 'train_cfg.val_interval=10',
               'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2']
    first = run_tool('train.py', PRETRAIN_DEMO, '--work-dir', tmp_path,
                     *_data_options(data_root, *options))
    assert 'FeatUp pretraining [3/3]' in first.stdout + first.stderr
    checkpoint = CheckpointLoader.load_checkpoint(str(tmp_path / 'iter_2.pth'))
    assert checkpoint['meta']['featup_pretrained'] is True
    options[1] = 'train_cfg.max_iters=4'
    resumed = run_tool('train.py', PRETRAIN_DEMO, '--work-dir', tmp_path, '--resume',
                       *_data_options(data_root, *options))
    log = resumed.stdout + resumed.stderr
    assert 'FeatUp pretraining: already done (checkpoint meta), skipped' in log
    assert 'FeatUp pretraining [1/' not in log
    assert (tmp_path / 'iter_4.pth').exists()


def test_two_process_pretraining_ends_with_identical_weights(data_root, tmp_path):
    result = run_torchrun('pretrain_upsampler.py', PRETRAIN_DEMO, '--launcher', 'pytorch',
                          '--work-dir', tmp_path,
                          *_data_options(data_root, 'custom_hooks.0.steps=4'),
                          port=29533)
    # the hook compares every rank's weights with rank 0's and fails on any difference
    assert 'upsampler weights identical on all 2 ranks' in result.stdout + result.stderr
    assert (tmp_path / 'featup_pretrained_upsampler.pth').exists()


def test_visualize_features(data_root, tmp_path):
    image = next((data_root / 'images' / 'validation').glob('*.jpg'))
    out = tmp_path / 'features.png'
    result = run_tool('visualize_features.py', image, PRETRAIN_DEMO, '--size', 96, 128,
                      '--out', out)
    assert f'wrote {out}' in result.stdout
    figure = cv2.imread(str(out))
    assert figure.shape == (28 + 96, 4 * 128, 3)
    panels = figure[28:].reshape(96, 4, 128, 3).transpose(1, 0, 2, 3)
    assert all(panel.std() > 0 for panel in panels)  # every panel shows something
    assert not (panels[2] == panels[3]).all()  # JBU differs from bilinear


def test_pretraining_freezes_the_backbone_and_leaves_no_gradients(data_root, tmp_path):
    cfg = Config.fromfile(PRETRAIN_DEMO)
    cfg.work_dir = str(tmp_path)
    cfg.custom_hooks[0].steps = 2
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[name].dataset.data_root = str(data_root)
        cfg[name].num_workers, cfg[name].persistent_workers = 0, False
    runner = Runner.from_cfg(cfg)
    hook, = [h for h in runner.hooks if isinstance(h, FeatUpPretrainHook)]
    model = runner.model
    model.train()
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    upsampler = {k: v.clone() for k, v in model.neck.upsampler.state_dict().items()}
    assert len(hook.pretrain(runner)) == 2
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, frozen[key], rtol=0, atol=0)
    assert any(not torch.equal(v, upsampler[k])
               for k, v in model.neck.upsampler.state_dict().items())
    assert all(p.grad is None for p in model.parameters())  # nothing leaks into training
    assert model.training and model.backbone.training  # modes restored
