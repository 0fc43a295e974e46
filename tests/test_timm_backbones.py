"""TimmFeatureBackbone: timm models as frozen or trainable mmseg backbones, and the
configs that pretrain FeatUp's JBU neck behind them."""
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
from helpers import ROOT
from mmengine.config import Config
from mmengine.model import BaseModule
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader
from mmseg.registry import MODELS
from safetensors.torch import save_file

import featup_mmseg.plugin  # noqa: F401
from featup_mmseg.engine import FeatUpPretrainHook
from featup_mmseg.models.input_size import fixed_input_size

init_default_scope('mmseg')
pytestmark = pytest.mark.filterwarnings('ignore:TimmFeatureBackbone.*are random:UserWarning')

# the smallest model of each family timm's constructors allow (channels, strides, tokens
# and norms as in the full models)
VIT14_REG = dict(model_name='vit_small_patch14_reg4_dinov2', img_size=28,
                 model_kwargs=dict(depth=2, embed_dim=32, num_heads=2))
VIT16_CLIP = dict(model_name='vit_base_patch16_clip_224.openai', img_size=32,
                  model_kwargs=dict(depth=2, embed_dim=32, num_heads=2))
RESNET = dict(model_name='resnet50', model_kwargs=dict(layers=(1, 1, 1, 1),
                                                       channels=(4, 8, 8, 8)))
CONVNEXT = dict(model_name='convnext_tiny', model_kwargs=dict(depths=(1, 1, 1, 1),
                                                              dims=(8, 8, 8, 16)))


def build(seed=0, **kwargs):
    torch.manual_seed(seed)  # timm initialises from torch's generator: same seed, same weights
    return MODELS.build(dict(type='TimmFeatureBackbone', **kwargs))


def timm_model(spec, seed=0):
    """The timm model a backbone of ``spec`` wraps, with the same random weights."""
    torch.manual_seed(seed)
    size = dict(img_size=spec['img_size']) if 'img_size' in spec else {}
    return timm.create_model(spec['model_name'], pretrained=False, **size,
                             **spec['model_kwargs']).eval()


def reference_maps(model, images, indices, final_norm):
    """What timm's blocks/stages compute at ``indices``, read with forward hooks, as
    (B, C, h, w): ViT prefix (class, register) tokens dropped, the final norm applied."""
    taken = {}
    modules = [model.get_submodule(model.feature_info[i]['module']) for i in indices]
    handles = [m.register_forward_hook(lambda m, a, out, i=i: taken.setdefault(i, out))
               for i, m in zip(indices, modules)]
    with torch.no_grad():
        model.forward_features(images)
    for handle in handles:
        handle.remove()
    maps = []
    for i in indices:
        out = taken[i]
        if out.dim() == 3:  # ViT tokens
            out = model.norm(out) if final_norm else out
            grid = model.patch_embed.grid_size
            out = out[:, model.num_prefix_tokens:].reshape(out.shape[0], *grid, -1)
            out = out.permute(0, 3, 1, 2)
        maps.append(out)
    return maps


@pytest.mark.parametrize('spec, size, out_indices, channels, strides', [
    (VIT14_REG, 28, (-1, 0), [32, 32], [14, 14]),
    (VIT16_CLIP, 32, (1, ), [32], [16]),
    (RESNET, 64, (-1, 1), [32, 16], [32, 4]),
    (CONVNEXT, 64, (-1, -3), [16, 8], [32, 8]),
])
def test_maps_channels_and_strides_are_timms(spec, size, out_indices, channels, strides):
    backbone = build(**spec, out_indices=out_indices).eval()
    assert backbone.out_channels == channels and backbone.strides == strides
    images = torch.randn(2, 3, size, size)
    maps = backbone(images)
    assert [tuple(m.shape) for m in maps] == [(2, c, size // s, size // s)
                                              for c, s in zip(channels, strides)]
    model = timm_model(spec)
    indices = [i % len(model.feature_info) for i in out_indices]
    for ours, theirs in zip(maps, reference_maps(model, images, indices, final_norm=True)):
        torch.testing.assert_close(ours, theirs)
    if model.feature_info[indices[0]]['module'].startswith('blocks'):
        # the last map is timm's own forward_features without its class/register tokens
        with torch.no_grad():
            tokens = model.forward_features(images)[:, model.num_prefix_tokens:]
        if indices[0] == len(model.feature_info) - 1:
            grid = size // strides[0]
            torch.testing.assert_close(maps[0], tokens.reshape(2, grid, grid, -1).permute(
                0, 3, 1, 2))
        assert model.num_prefix_tokens == (5 if 'reg4' in spec['model_name'] else 1)
    raw = build(**spec, out_indices=out_indices, final_norm=False).eval()(images)
    for ours, theirs in zip(raw, reference_maps(model, images, indices, final_norm=False)):
        torch.testing.assert_close(ours, theirs)


def test_frozen_backbone_gets_no_gradients_and_stays_in_eval_mode():
    backbone = build(**RESNET, frozen=True)
    parent = BaseModule()  # as a segmentor holds it
    parent.backbone = backbone
    parent.train()
    assert not backbone.training and not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}  # BN statistics too
    head = torch.nn.Conv2d(32, 1, 1)
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=1.0,
                                  weight_decay=0.5)
    out, = backbone(torch.randn(2, 3, 64, 64))
    assert not out.requires_grad  # no graph built through the backbone
    head(out).mean().backward()
    optimizer.step()
    assert all(p.grad is None for p in backbone.parameters()) and head.weight.grad is not None
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key

    trainable = build(**RESNET, frozen=False)
    parent.backbone = trainable
    parent.train()
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())
    out, = trainable(torch.randn(2, 3, 64, 64))
    out.mean().backward()
    assert all(p.grad is not None for p in trainable.parameters())  # all used: no DDP stalls


@pytest.fixture(scope='module')
def saved_vit(tmp_path_factory):
    """A random ViT-S/14's state dict, in timm's layout, as .safetensors and .pth files."""
    folder = tmp_path_factory.mktemp('checkpoints')
    state_dict = {k: v.contiguous() for k, v in timm_model(VIT14_REG).state_dict().items()}
    save_file(state_dict, str(folder / 'model.safetensors'))
    torch.save({'state_dict': state_dict}, folder / 'wrapped.pth')
    torch.save({'model': state_dict}, folder / 'model.bin')
    return folder


def test_checkpoints_round_trip_and_init_weights_keeps_them(saved_vit):
    images = torch.randn(1, 3, 28, 28)
    expected, = build(**VIT14_REG, seed=0)(images)
    other, = build(**VIT14_REG, seed=1)(images)
    assert not torch.allclose(expected, other)
    for name in ('model.safetensors', 'wrapped.pth', 'model.bin'):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            backbone = build(**VIT14_REG, seed=1, checkpoint=saved_vit / name)
        # a named checkpoint: no random-weights warning
        assert not [w for w in caught if 'are random' in str(w.message)]
        assert backbone.weights_source == str(saved_vit / name)
        torch.testing.assert_close(backbone(images)[0], expected, rtol=0, atol=0)
        parent = BaseModule()
        parent.backbone = backbone
        parent.init_weights()  # mmengine's would re-initialise timm's ViT
        torch.testing.assert_close(backbone(images)[0], expected, rtol=0, atol=0)


def test_checkpoint_of_another_grid_is_resized_by_timms_filter(saved_vit):
    larger = dict(VIT14_REG, img_size=42)
    backbone = build(**larger, checkpoint=saved_vit / 'model.safetensors')
    assert backbone(torch.randn(1, 3, 42, 42))[0].shape == (1, 32, 3, 3)
    # 3 x 3 patches (DINOv2's position embedding has no entries for its prefix tokens)
    assert tuple(backbone.model.pos_embed.shape) == (1, 9, 32)


def test_bad_checkpoints_are_refused_by_name(saved_vit, tmp_path):
    torch.save(timm_model(RESNET).state_dict(), tmp_path / 'resnet.pth')
    with pytest.raises(ValueError, match=r'TimmFeatureBackbone: checkpoint .*resnet\.pth '
                       r'\(for vit_small_patch14_reg4_dinov2\) does not match '
                       r'VisionTransformer; nothing was loaded\.\n\d+ missing keys:\n  '
                       r'blocks\.0\.'):
        build(**VIT14_REG, checkpoint=tmp_path / 'resnet.pth')
    (tmp_path / 'notes.pth').write_text('not a checkpoint')
    with pytest.raises(ValueError, match=r'checkpoint: .*notes\.pth is not a readable '
                       'PyTorch checkpoint'):
        build(**VIT14_REG, checkpoint=tmp_path / 'notes.pth')
    (tmp_path / 'notes.safetensors').write_text('not a checkpoint')
    with pytest.raises(ValueError, match=r'checkpoint .*notes\.safetensors is not a '
                       'readable safetensors file'):
        build(**VIT14_REG, checkpoint=tmp_path / 'notes.safetensors')
    torch.save({'weights': [1, 2]}, tmp_path / 'list.pth')
    with pytest.raises(ValueError, match=r'list\.pth: expected a state dict of tensors'):
        build(**VIT14_REG, checkpoint=tmp_path / 'list.pth')
    with pytest.raises(OSError, match=r'TimmFeatureBackbone: checkpoint .*missing\.pth: No '
                       'such file'):
        build(**VIT14_REG, checkpoint=tmp_path / 'missing.pth')


def test_random_weights_warn_with_where_to_get_them():
    with pytest.warns(UserWarning, match=r"weights of resnet50 are random \(checkpoint=None\)"
                      r": frozen random features .*https://huggingface\.co/timm/resnet50\."
                      r".*checkpoint='pretrain/resnet50\.safetensors'"):
        backbone = build(**RESNET)
    assert backbone.weights_source is None


@pytest.mark.parametrize('spec, message', [
    (dict(CONVNEXT, img_size=336),
     r"img_size \(336, 336\) is not a multiple of convnext_tiny's stride 32 at out_indices "
     r'\(-1,\): its features would cover 10\.5 x 10\.5 cells and be stretched over the '
     r'image; use img_size=\(320, 320\) or \(352, 352\)'),
    (dict(VIT14_REG, img_size=299),
     r"img_size \(299, 299\) is not a multiple of vit_small_patch14_reg4_dinov2's stride 14"
     r'.*use img_size=\(294, 294\) or \(308, 308\)'),
])
def test_sizes_the_stride_does_not_divide_are_refused_when_built(spec, message):
    with pytest.raises(ValueError, match='TimmFeatureBackbone: ' + message):
        build(**spec)


def test_the_largest_stride_of_the_requested_maps_must_divide_img_size():
    assert build(**RESNET, img_size=(64, 48), out_indices=(2, )).strides == [8]
    with pytest.raises(ValueError, match=r'img_size \(64, 48\) is not a multiple of resnet50\'s '
                       r'stride 32 at out_indices \(2, -1\).*use img_size=\(64, 32\) or '
                       r'\(64, 64\)'):
        build(**RESNET, img_size=(64, 48), out_indices=(2, -1))


def test_input_sizes_are_checked_at_forward_time():
    vit = build(**VIT14_REG)
    assert fixed_input_size(vit) == (28, 28)  # what the tools read their default size from
    with pytest.raises(ValueError, match=r'vit_small_patch14_reg4_dinov2 was built for 28 x '
                       r'28 inputs \(img_size\), got 42 x 42; resize the images to 28 x 28'):
        vit(torch.randn(1, 3, 42, 42))
    dynamic = build(**dict(VIT14_REG, model_kwargs=dict(VIT14_REG['model_kwargs'],
                                                        dynamic_img_size=True)))
    assert fixed_input_size(dynamic) is None
    assert dynamic(torch.randn(1, 3, 42, 56))[0].shape == (1, 32, 3, 4)
    with pytest.raises(ValueError, match=r'input size \(43, 42\) is not a multiple of .*'
                       r'stride 14.*resize or pad the images to \(42, 42\) or \(56, 42\)'):
        dynamic(torch.randn(1, 3, 43, 42))
    convnext = build(**CONVNEXT)
    assert fixed_input_size(convnext) is None
    with pytest.raises(ValueError, match=r'input size \(100, 100\).*3\.125 x 3\.125 cells.*'
                       r'\(96, 96\) or \(128, 128\)'):
        convnext(torch.randn(1, 3, 100, 100))


@pytest.mark.parametrize('kwargs, message', [
    (dict(model_name='vit_smal_patch14_dinov2'),
     r"timm .* has no model 'vit_smal_patch14_dinov2'; close names: "
     r'vit_small_patch14_dinov2'),
    (dict(model_name='vit_small_patch16_224.nope'),
     r"model_name 'vit_small_patch16_224.nope': .*Known tags: .*vit_small_patch16_224\.dino"),
    (dict(RESNET, out_indices=(5, )),
     r'out_indices \(5,\): 5 is out of range; resnet50 has 5 feature levels .*-5 to 4'),
    (dict(RESNET, out_indices=()), r'out_indices must be an int or a non-empty sequence'),
    (dict(RESNET, out_indices=(1.0, )), r'out_indices must be an int or a non-empty'),
    (dict(RESNET, frozen='yes'), r'frozen must be True or False'),
    (dict(RESNET, img_size=0), r'img_size must be a positive int or an \(H, W\) pair'),
    (dict(RESNET, checkpoint='https://example.com/w.pth'), r'checkpoint must be the path of '
     r'a local weights file \(nothing is downloaded\)'),
    (dict(model_name='resnet50', model_kwargs=dict(depth=2)),
     r"timm's resnet50 does not take model_kwargs \{'depth': 2\}"),
    (dict(model_name='resnet50', model_kwargs=dict(pretrained=True)),
     r"model_kwargs must not set 'pretrained'"),
    (dict(model_name='resnet50', model_kwargs='depth=2'), r'model_kwargs must be a dict'),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match='TimmFeatureBackbone: ' + message):
        build(**kwargs)


# ----------------------------------------------------------------------------------------
# the configs

CONFIGS = sorted((ROOT / 'configs' / 'featup_timm').glob('*.py'))
# fewer blocks or stages (the channels, strides and tokens stay the full model's) ...
SHALLOW = {'vit': dict(depth=1), 'resnet50': dict(layers=(1, 1, 1, 1)),
           'convnext': dict(depths=(1, 1, 1, 1))}
# ... and, to train in seconds, fewer channels too
NARROW = {'vit': dict(embed_dim=32, num_heads=2), 'resnet50': dict(channels=(8, 8, 8, 8)),
          'convnext': dict(dims=(8, 8, 8, 16))}


def _family(table, model_name):
    return next(v for k, v in table.items() if model_name.startswith(k))


@pytest.mark.parametrize('config', CONFIGS, ids=lambda path: path.stem)
def test_config_matches_its_backbone(config):
    cfg = Config.fromfile(config)
    backbone_cfg = cfg.model.backbone
    name = backbone_cfg.model_name
    assert backbone_cfg.checkpoint == f'pretrain/{name}.safetensors'
    assert f'https://huggingface.co/timm/{name}' in config.read_text()  # where to get it
    assert backbone_cfg.frozen and cfg.model.neck.out_stride == 1
    backbone = MODELS.build(dict(backbone_cfg, checkpoint=None,
                                 model_kwargs=_family(SHALLOW, name)))
    size = tuple(backbone_cfg.img_size)  # built: the stride divides it
    assert tuple(cfg.model.data_preprocessor.size) == size
    assert tuple(cfg.train_dataloader.dataset.pipeline[2].crop_size) == size
    channels = backbone.out_channels[-1]
    assert cfg.model.neck.in_channels == cfg.model.decode_head.in_channels == channels
    # the neck's stages reach the image size from the backbone's grid
    stages = cfg.model.neck.num_stages
    assert 2**(stages - 1) < backbone.strides[-1] <= 2**stages
    assert cfg.train_dataloader.dataset.type == 'UnlabelledImageFolder'


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('my_images')
    (root / 'more').mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(('a.png', 'more/b.jpg', 'more/c.png')):
        cv2.imwrite(str(root / name), rng.integers(0, 256, (70 + 10 * i, 90, 3), np.uint8))
    return root


@pytest.mark.parametrize('config', CONFIGS, ids=lambda path: path.stem)
def test_config_pretrains_the_neck_on_an_image_folder(config, image_folder, tmp_path):
    """tools/train.py's path (the runner's train(), which runs only the pretraining hook
    here) on a narrow, shallow version of the config's model at a small size."""
    cfg = Config.fromfile(config)
    name = cfg.model.backbone.model_name
    kwargs = dict(_family(SHALLOW, name), **_family(NARROW, name))
    side = 4 * 14 if 'patch14' in name else 2 * 32 if 'patch' not in name else 2 * 16
    size = (side, side)
    cfg.model.backbone.update(checkpoint=None, img_size=size, model_kwargs=kwargs)
    channels = MODELS.build(cfg.model.backbone).out_channels[-1]
    cfg.model.neck.in_channels = channels
    cfg.model.decode_head.update(in_channels=channels, channels=channels)
    cfg.model.data_preprocessor.size = size
    pipeline = cfg.train_dataloader.dataset.pipeline
    pipeline[1].scale, pipeline[2].crop_size = (2 * side, side), size
    cfg.train_dataloader.update(batch_size=1, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.data_root = str(image_folder)
    cfg.custom_hooks[0].update(steps=2, images_per_step=2, max_pad=4)
    cfg.work_dir, cfg.log_level = str(tmp_path), 'WARNING'
    runner = Runner.from_cfg(cfg)
    backbone = runner.model.backbone
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    runner.train()
    hook, = [h for h in runner.hooks if isinstance(h, FeatUpPretrainHook)]
    assert len(hook.losses) == 2 and runner.iter == 0  # no supervised iteration
    assert not backbone.training
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, frozen[key]), key
    saved = CheckpointLoader.load_checkpoint(str(tmp_path / 'featup_pretrained_upsampler.pth'))
    runner.model.neck.load_pretrained(str(tmp_path / 'featup_pretrained_upsampler.pth'),
                                      'neck.')
    assert set(saved['state_dict']) == {'neck.' + k for k in runner.model.neck.state_dict()}
