"""AnyUp's and NAF's training objectives (layers.upsampler_objectives) and the pretraining
hook running them on a neck's AnyUp, NAF or JBU stack."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.runner import Runner
from mmseg.registry import HOOKS

import featup_mmseg.plugin  # noqa: F401
from featup_mmseg.datasets import generate_synthetic_shapes
from featup_mmseg.engine import FeatUpPretrainHook
from featup_mmseg.layers.upsampler_objectives import (anyup_objective, cosine_mse_loss,
                                                      naf_objective, photometric_augmentation)
from helpers import ROOT
from test_pretraining import PRETRAIN_DEMO
from test_timm_backbones import image_folder  # noqa: F401  (a fixture)

STRIDE = 4


def _patchify(seed=0, channels=6):
    """A backbone whose features of an image crop on its cell grid are exactly the crop
    of its features (a stride-4 patch embedding)."""
    conv = torch.nn.Conv2d(3, channels, STRIDE, STRIDE)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return conv


def test_cosine_mse_loss_is_anyups_definition():
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 2, 5, 3, 4, generator=generator)
    flat_pred = pred.permute(0, 2, 3, 1).reshape(-1, 5)
    flat_target = target.permute(0, 2, 3, 1).reshape(-1, 5)
    cosine = (flat_pred * flat_target).sum(1) / (flat_pred.norm(dim=1) * flat_target.norm(dim=1))
    low = flat_target.min(1, keepdim=True).values
    high = flat_target.max(1, keepdim=True).values
    normalised = [(t - low) / (high - low + 1e-6) for t in (flat_pred, flat_target)]
    expected = (1 - cosine).mean() + ((normalised[0] - normalised[1]) ** 2).mean()
    torch.testing.assert_close(cosine_mse_loss(pred, target), expected)
    assert cosine_mse_loss(target, target).abs() < 1e-6


def test_naf_objective_upsamples_half_size_features_to_the_full_size_grid():
    torch.manual_seed(0)
    backbone, images = _patchify(), torch.randn(2, 3, 40, 48)
    calls = []

    def upsample(features, image, output_size):
        calls.append((features, image, output_size))
        return F.interpolate(features, size=output_size, mode='bilinear')

    loss = naf_objective(images, backbone, upsample)
    (low_res, guidance, output_size), = calls
    assert output_size == (10, 12)  # the full image's grid
    half = F.interpolate(images, size=(20, 24), mode='bilinear', antialias=True)
    torch.testing.assert_close(low_res, backbone(half))  # half size, on the stride's grid
    assert guidance.shape[-2:] == (40, 48)  # 4 px per output cell, under 224 px
    expected = F.mse_loss(F.interpolate(low_res, size=(10, 12), mode='bilinear'),
                          backbone(images))
    torch.testing.assert_close(loss, expected)


def test_anyup_objective_compares_each_crop_with_the_prediction_there():
    torch.manual_seed(0)
    backbone, images = _patchify(), torch.randn(2, 3, 32, 40)
    full = backbone(images)
    calls = []

    def oracle(shift):
        """Returns the full image's features (shifted by ``shift`` cells) at its grid."""
        def upsample(features, image, output_size):
            calls.append((features.shape, image.shape, output_size))
            return torch.roll(full, shift, dims=-1) + 0 * features.mean()
        return upsample

    exact = anyup_objective(images, backbone, oracle(0), num_crops=3, augmentation_weight=0,
                            downsampling_weight=0, generator=torch.Generator().manual_seed(1))
    assert exact < 1e-5  # stride-aligned crops: their features are the prediction's slices
    assert calls == [((2, 6, 4, 5), (2, 3, 16, 20), (8, 10))]
    shifted = anyup_objective(images, backbone, oracle(1), num_crops=3, augmentation_weight=0,
                              downsampling_weight=0,
                              generator=torch.Generator().manual_seed(1))
    assert shifted > 0.1
    calls.clear()
    anyup_objective(images, backbone, oracle(0), generator=torch.Generator().manual_seed(1))
    # the augmented guidance against the plain one, both at the half-size image's size
    assert [call[2] for call in calls] == [(8, 10), (16, 20), (16, 20)]


def test_photometric_augmentation_changes_pixels_reproducibly():
    images = torch.randn(8, 3, 12, 10)
    first = photometric_augmentation(images, generator=torch.Generator().manual_seed(0))
    again = photometric_augmentation(images, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(first, again)
    assert first.shape == images.shape
    changed = (first - images).abs().flatten(1).amax(1) > 1e-3
    assert 0 < changed.sum() <= 8  # drawn per image


# ----------------------------------------------------------------------------------------
# the hook

@pytest.mark.parametrize('objective, upsampler, size', [
    ('naf', 'NAF', 64), ('anyup', 'AnyUp', 64),
    ('naf', None, 128),  # JBU stages need 4 x 4 maps: the half-size image's at 16 px cells
])
def test_hook_trains_a_neck_upsampler_with_the_method_objective(tmp_path, objective,
                                                                upsampler, size):
    data_root = generate_synthetic_shapes(tmp_path / 'data', num_train=4, num_val=1, size=size)
    cfg = Config.fromfile(PRETRAIN_DEMO)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.custom_hooks[0].update(steps=3, images_per_step=2, objective=objective)
    cfg.model.data_preprocessor.size = cfg.model.backbone.img_size = (size, size)
    if upsampler is not None:  # else FeatUp's JBU stack (the demo's JBUNeck)
        cfg.model.neck = dict(type='FeatureUpsamplingNeck', in_channels=64,
                              upsampler=dict(type=upsampler))
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[name].dataset.data_root = str(data_root)
        cfg[name].num_workers, cfg[name].persistent_workers = 0, False
    runner = Runner.from_cfg(cfg)
    hook, = [h for h in runner.hooks if isinstance(h, FeatUpPretrainHook)]
    before = {k: v.clone() for k, v in runner.model.neck.upsampler.state_dict().items()}
    losses = hook.pretrain(runner)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    saved = torch.load(tmp_path / 'work/featup_pretrained_upsampler.pth', weights_only=True)
    assert saved['meta']['featup_pretrain']['objective'] == objective
    changed = [k for k, v in before.items()
               if not torch.equal(v, saved['state_dict'][f'neck.upsampler.{k}'])]
    assert changed  # the upsampler learned
    assert hook.optimizer_cfg['type'] == 'AdamW'


def test_hook_refuses_method_objectives_for_head_stages_and_unknown_ones():
    with pytest.raises(ValueError, match=r"objective 'naf' trains a neck's upsampler"):
        HOOKS.build(dict(type='FeatUpPretrainHook', objective='naf', target='decode_head'))
    with pytest.raises(ValueError, match=r"objective must be one of \('featup', 'anyup', "
                       r"'naf'\), got 'jafar'"):
        HOOKS.build(dict(type='FeatUpPretrainHook', objective='jafar'))


CONFIGS = sorted((ROOT / 'configs' / 'anyup_naf').glob('*.py'))


@pytest.mark.parametrize('config', CONFIGS, ids=lambda path: path.stem)
def test_config_trains_its_neck_on_an_image_folder(config, image_folder, tmp_path):
    """tools/pretrain_upsampler.py's path on a one-block, narrow version of the config's
    ViT at 56 px (4 x 4 patches; its objective also runs it at 28 px)."""
    cfg = Config.fromfile(config)
    assert cfg.model.backbone.model_kwargs == dict(dynamic_img_size=True)
    size = (56, 56)
    cfg.model.backbone.update(checkpoint=None, img_size=size, model_kwargs=dict(
        cfg.model.backbone.model_kwargs, depth=1, embed_dim=32, num_heads=2))
    cfg.model.neck.in_channels = 32
    cfg.model.decode_head.update(in_channels=32, channels=32)
    cfg.model.data_preprocessor.size = size
    pipeline = cfg.train_dataloader.dataset.pipeline
    pipeline[1].scale, pipeline[2].crop_size = (112, 56), size
    cfg.train_dataloader.update(batch_size=1, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.data_root = str(image_folder)
    cfg.custom_hooks[0].update(steps=2, images_per_step=2)
    cfg.work_dir, cfg.log_level = str(tmp_path), 'WARNING'
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook, = [h for h in runner.hooks if isinstance(h, FeatUpPretrainHook)]
    assert len(hook.losses) == 2
    saved = torch.load(tmp_path / cfg.custom_hooks[0].checkpoint_name, weights_only=True)
    assert saved['meta']['featup_pretrain']['objective'] == cfg.custom_hooks[0].objective
