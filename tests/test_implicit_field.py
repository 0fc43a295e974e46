"""Implicit FeatUp: the field, its fit to one image, and tools/implicit_featup.py."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import ROOT, run_tool

from featup_mmseg.layers import (ImplicitFeatureField, ImplicitFitConfig, fit_implicit_features,
                                 sample_jitter)
from featup_mmseg.layers.implicit_field import IMPLICIT_PRESETS, view_reconstruction_error
from featup_mmseg.layers.multiview import total_variation

PRETRAIN_DEMO = ROOT / 'configs/demo/vit-tiny_jbu-neck_featup-pretrain_synthetic-128x128.py'
FIT_SIZE = 64
# a CPU budget of seconds for the 64 x 64 test image and its 8 x 8 features; the
# downsampler's window is the backbone's receptive field
TEST_FIT = dict(steps=200, num_jitters=4, num_views=128, pca_dim=16, max_pad=8, kernel_size=8,
                hidden_dim=32)


def photograph(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A (height, width, 3) BGR photograph-like scene: a graded sky with a sun, textured
    hills, a house, a red umbrella on a thin pole, a lens blur and sensor noise."""
    rng = np.random.default_rng(seed)
    size = np.array([width, height])
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    image = (1 - ys) * np.array([235, 170, 110], np.float32) + ys * np.array([250, 225, 200])
    image = np.broadcast_to(image, (height, width, 3)).copy()
    cv2.circle(image, tuple(int(v) for v in size * [0.8, 0.15]), int(height * 0.07),
               (170, 235, 255), -1)
    horizon = (0.55 + 0.06 * np.sin(np.linspace(0, 7, width) + rng.uniform(0, 6))) * height
    ground = np.arange(height)[:, None] > horizon[None, :]
    texture = sum(cv2.resize(rng.normal(0, 1, (n, n)).astype(np.float32), (width, height))
                  for n in (4, 16, 64))
    image[ground] = (np.array([60, 140, 90]) + 18 * texture[ground, None]).clip(0, 255)
    corner = size * [0.1, 0.5]
    cv2.rectangle(image, tuple(int(v) for v in corner), tuple(int(v) for v in size * [0.32, 0.8]),
                  (90, 110, 200), -1)
    roof = np.array([size * [0.07, 0.5], size * [0.35, 0.5], size * [0.21, 0.35]], np.int32)
    cv2.fillPoly(image, [roof], (40, 50, 110))
    pole_top, pole_bottom = size * [0.62, 0.42], size * [0.62, 0.9]
    cv2.line(image, tuple(int(v) for v in pole_top), tuple(int(v) for v in pole_bottom),
             (30, 30, 30), max(1, width // 120))
    cv2.ellipse(image, tuple(int(v) for v in pole_top), tuple(int(v) for v in size * [0.16, 0.1]),
                0, 180, 360, (40, 40, 220), -1)
    image = cv2.GaussianBlur(image, (0, 0), 0.6) + rng.normal(0, 4, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def normalised(image: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) RGB float input of a BGR uint8 image."""
    rgb = torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1).float()
    return ((rgb / 255 - 0.45) / 0.25)[None]


def resized(image: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


class PooledBackbone(nn.Module):
    """A small random convnet whose features pool local patterns over 8 x 8 pixel cells,
    as a backbone's features summarise their receptive fields: (B, 3, H, W) ->
    (B, 24, H/8, W/8)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(32, 24, 1), nn.ReLU(), nn.AvgPool2d(8))

    def forward(self, images):
        return self.layers(images)


@pytest.fixture(scope='module')
def scene():
    photo = photograph(256, 256)
    return photo, normalised(resized(photo, FIT_SIZE)), PooledBackbone().eval()


def fit(scene, seed=0, **settings):
    _, image, backbone = scene
    torch.manual_seed(seed)
    config = ImplicitFitConfig(**dict(TEST_FIT, **settings))
    return fit_implicit_features(image, backbone, config,
                                 generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module')
def fitted(scene):
    return fit(scene)


def heldout_jitters(count=12):
    generator = torch.Generator().manual_seed(1234)  # not the fit's views
    return [sample_jitter(FIT_SIZE, FIT_SIZE, TEST_FIT['max_pad'], 1.8, generator)
            for _ in range(count)]


# ----------------------------------------------------------------------------------------
# fitting

def test_field_reconstructs_heldout_views_better_than_bilinear(scene, fitted):
    _, image, backbone = scene
    jitters = heldout_jitters()
    bilinear = F.interpolate(fitted.low_res, (FIT_SIZE, FIT_SIZE), mode='bilinear',
                             align_corners=False)
    untrained = fit(scene, steps=1)
    for downsample in (None, fitted.downsample):  # area averaging, the learned downsampler
        errors = {
            name: view_reconstruction_error(features, image, backbone, jitters, downsample)
            for name, features in (('implicit', fitted.query()), ('bilinear', bilinear),
                                   ('untrained', untrained.query()))
        }
        assert errors['implicit'] < 0.8 * errors['bilinear'], errors
        assert errors['untrained'] > errors['bilinear'], errors  # the comparison can fail
    assert np.mean(fitted.losses[-10:]) < np.mean(fitted.losses[:10])


def test_output_is_in_the_backbone_space_at_any_size(scene, fitted):
    photo, _, _ = scene
    low_res = fitted.low_res
    assert fitted.pca_dim == TEST_FIT['pca_dim']
    coarse = fitted.query()
    fine = fitted.query((128, 128), normalised(resized(photo, 128)))
    wide = fitted.query((96, 160))
    assert coarse.shape == (1, 24, 64, 64) and fine.shape == (1, 24, 128, 128)
    assert wide.shape == (1, 24, 96, 160) and torch.isfinite(wide).all()
    # the two resolutions agree once the finer one is averaged down to the coarser grid
    spread = (coarse - coarse.mean((2, 3), keepdim=True)).square().mean()
    assert (F.avg_pool2d(fine, 2) - coarse).square().mean() < 0.05 * spread
    # and the backbone's own grid sees its features again (the PCA is inverted)
    cells = F.adaptive_avg_pool2d(coarse, low_res.shape[-2:])
    assert (cells - low_res).square().mean() < 0.15 * low_res.var(dim=(2, 3)).mean()


def test_ablations_switch_off_colour_features_and_the_tv_prior(scene, fitted):
    photo, image, _ = scene
    other = normalised(resized(photo[::-1, ::-1], FIT_SIZE))  # another image's colours
    assert not torch.allclose(fitted.query(image=other), fitted.query())
    coordinates_only = fit(scene, steps=3, color_features=False)
    assert coordinates_only.field.mlp[0].normalized_shape == (2 * 16 * 2, )
    torch.testing.assert_close(coordinates_only.query(image=other), coordinates_only.query())

    def magnitude_variation(result):
        coefficients = result.pca.encode(result.query())
        return total_variation(coefficients.norm(dim=1, keepdim=True)).item()

    without_tv = fit(scene, steps=60, tv_weight=0.0)
    strong_tv = fit(scene, steps=60, tv_weight=50.0)
    assert magnitude_variation(strong_tv) < 0.5 * magnitude_variation(without_tv)


def test_progress_reports_steps_loss_and_time_left(scene):
    _, image, backbone = scene
    reports = []
    config = ImplicitFitConfig(**dict(TEST_FIT, steps=5, num_views=20, view_batch_size=8))
    fit_implicit_features(image, backbone, config, progress=reports.append)
    views = [r for r in reports if r.stage == 'views']
    steps = [r for r in reports if r.stage == 'fit']
    assert [r.done for r in views] == [8, 16, 20] and views[0].total == 20
    assert [r.done for r in steps] == [1, 2, 3, 4, 5] and steps[-1].remaining == 0
    assert all(r.loss is not None and r.remaining >= 0 for r in steps)
    assert 'fit [5/5]' in str(steps[-1]) and 'loss' in str(steps[-1])


def test_presets():
    paper = IMPLICIT_PRESETS['paper']
    assert (paper.steps, paper.num_jitters, paper.pca_dim, paper.kernel_size, paper.max_pad,
            paper.max_zoom, paper.tv_weight, paper.num_layers, paper.dropout,
            paper.lr) == (2000, 10, 128, 29, 30, 1.8, 0.05, 3, 0.1, 1e-3)
    assert paper == ImplicitFitConfig() and paper.downsampler == 'attention'
    fast = ImplicitFitConfig.preset('fast', steps=7)
    assert fast.steps == 7 and fast.num_jitters < paper.num_jitters


def test_float16_image_is_fitted_in_float32(scene):
    """float16 cannot hold NAdam's state (its eps of 1e-8 rounds to 0): the fit turned NaN
    from its second step. The backbone still gets the float16 image."""
    _, image, backbone = scene
    seen = []

    def half_backbone(images):  # a float16 backbone, as on a GPU (CPU convs in float32)
        seen.append(images.dtype)
        return backbone(images.float()).half()

    torch.manual_seed(0)
    config = ImplicitFitConfig(**dict(TEST_FIT, steps=10, num_views=16))
    fitted = fit_implicit_features(image.half(), half_backbone, config,
                                   generator=torch.Generator().manual_seed(0))
    assert set(seen) == {torch.float16}
    assert all(np.isfinite(fitted.losses)) and fitted.losses[-1] < fitted.losses[0]
    features = fitted.query(image=image.half())
    assert features.dtype == torch.float32 and torch.isfinite(features).all()


def test_a_loss_that_is_no_longer_finite_stops_the_fit(scene):
    _, image, backbone = scene
    config = ImplicitFitConfig(**dict(TEST_FIT, steps=50, num_views=8, lr=1e30))
    with pytest.raises(FloatingPointError, match=r'fit_implicit_features: the loss became '
                       r'(nan|inf) at step \d+ of 50 \(torch.float32 image, fitted in '
                       r'torch.float32\)'):
        fit_implicit_features(image, backbone, config)


def test_non_finite_images_and_features_are_refused_clearly(scene, fitted):
    _, image, backbone = scene
    config = ImplicitFitConfig(**dict(TEST_FIT, steps=1, num_views=2))
    bad = image.clone()
    bad[0, 1, 3, 4] = float('nan')
    with pytest.raises(ValueError, match=r'fit_implicit_features: image \(1, 3, 64, 64\) has 1 '
                       'NaN or infinite values'):
        fit_implicit_features(bad, backbone, config)
    with pytest.raises(ValueError, match=r'ImplicitFeatures.query: image \(1, 3, 64, 64\) has '
                       '1 NaN or infinite values'):
        fitted.query(image=bad)

    def overflowing(images):
        features = backbone(images)
        features[:, :, 0, 0] = float('inf')
        return features

    with pytest.raises(ValueError, match="fit_implicit_features: the backbone's features "
                       r'\(1, 24, 8, 8\) has 24 NaN or infinite values'):
        fit_implicit_features(image, overflowing, config)


def test_query_decodes_in_chunks_of_any_size(fitted):
    whole = fitted.query((40, 24), chunk_size=40 * 24)
    torch.testing.assert_close(fitted.query((40, 24), chunk_size=7), whole)
    with pytest.raises(ValueError, match='ImplicitFeatures.query: chunk_size must be an integer '
                       '>= 1, got -5'):
        fitted.query(chunk_size=-5)


QUERY_MEMORY = r'''
import torch
from featup_mmseg.layers import ImplicitFitConfig, fit_implicit_features

def resident_kib(field):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

torch.manual_seed(0)
backbone = torch.nn.Conv2d(3, 64, 8, stride=8)
config = ImplicitFitConfig(steps=1, num_jitters=1, num_views=2, pca_dim=8, max_pad=2,
                           kernel_size=5, hidden_dim=8)
fitted = fit_implicit_features(torch.randn(1, 3, 32, 32), backbone, config)
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # the peak resident set from here on
before = resident_kib('VmRSS:')
features = fitted.query(1024, chunk_size=4096)
print((resident_kib('VmHWM:') - before) * 1024 / (features.numel() * features.element_size()))
'''


def test_query_memory_is_the_output_and_one_chunk():
    """Decoded chunk by chunk into the output: the coefficients, the decoded features and
    their mean-shifted copy were each held whole before (2.5x the output here)."""
    result = subprocess.run([sys.executable, '-c', QUERY_MEMORY], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 1.5, result.stdout


def test_a_channel_of_constant_colour_is_not_magnified(scene):
    """Its own range (0) made noise in it a large input to the colour frequencies (a 1e-3
    perturbation moved the features by 24 % of their variation, against 0.2 % in another
    channel); the image's range scales every channel now."""
    _, image, backbone = scene
    flat = image.clone()
    flat[:, 2] = 0.3
    torch.manual_seed(0)
    fitted = fit_implicit_features(flat, backbone, ImplicitFitConfig(**TEST_FIT),
                                   generator=torch.Generator().manual_seed(0))
    features = fitted.query()
    spread = (features - features.mean((2, 3), keepdim=True)).norm()
    changes = []
    for channel in (0, 2):
        noisy = flat.clone()
        noisy[:, channel] += 1e-3 * torch.randn(noisy[:, channel].shape,
                                                generator=torch.Generator().manual_seed(5))
        changes.append(((fitted.query(image=noisy) - features).norm() / spread).item())
    assert changes[1] < 3 * changes[0], changes
    one_colour = fit_implicit_features(torch.zeros_like(image), backbone,
                                       ImplicitFitConfig(**dict(TEST_FIT, steps=2)))
    assert torch.isfinite(one_colour.query(image=torch.rand_like(image))).all()


# ----------------------------------------------------------------------------------------
# bad arguments

@pytest.mark.parametrize('settings, message', [
    (dict(steps=0), 'steps must be an integer >= 1'),
    (dict(num_views=2.5), 'num_views must be an integer'),
    (dict(pca_dim=0), 'pca_dim must be an integer >= 1'),
    (dict(downsampler='max'), 'downsampler must be one of'),
    (dict(tv_weight=-1.0), 'tv_weight must be a finite number >= 0'),
    (dict(max_zoom=0.5), 'max_zoom must be a finite number >= 1'),
    (dict(dropout=1.0), r'dropout must be in \[0, 1\)'),
    (dict(min_frequency=0.0), 'min_frequency must be a finite number > 0'),
    (dict(max_frequency=0.1), 'max_frequency must be a finite number >= 0.5'),
    (dict(color_features='yes'), 'color_features must be True or False'),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=f'ImplicitFitConfig: {message}'):
        ImplicitFitConfig(**settings)


def test_bad_fit_and_query_arguments_are_refused(scene, fitted):
    _, image, backbone = scene
    config = ImplicitFitConfig(**dict(TEST_FIT, steps=1, num_views=2))
    with pytest.raises(ValueError, match="preset: name must be one of .'paper', 'fast'."):
        ImplicitFitConfig.preset('slow')
    with pytest.raises(ValueError, match=r"unknown settings \['step'\]"):
        ImplicitFitConfig.preset('fast', step=3)
    with pytest.raises(ValueError, match='config must be an ImplicitFitConfig, got dict'):
        fit_implicit_features(image, backbone, dict(steps=1))
    for bad in (image[0], image[:, :2], (image * 255).to(torch.uint8), image.numpy()):
        with pytest.raises(ValueError, match=r'image must be a floating-point \(1, 3, H, W\)'):
            fit_implicit_features(bad, backbone, config)
    with pytest.raises(ValueError, match=r'backbone must map .* to one \(B, C, h, w\) feature'):
        fit_implicit_features(image, lambda x: (backbone(x), ), config)
    with pytest.raises(ValueError, match=r'kernel_size 60 leaves \(5, 5\) windows .* use '
                       r'kernel_size <= 57'):
        fit_implicit_features(image, backbone, ImplicitFitConfig(kernel_size=60))
    with pytest.raises(ValueError, match='max_pad 64 must be smaller than the image size'):
        fit_implicit_features(image, backbone, ImplicitFitConfig(max_pad=64, kernel_size=15))
    with pytest.raises(ValueError, match=r'query: size must be a positive int or an \(H, W\)'):
        fitted.query((0, 12))
    with pytest.raises(ValueError, match=r'high_res must be \(1, C, H, W\) at the image size'):
        view_reconstruction_error(fitted.low_res, image, backbone, heldout_jitters(1))
    with pytest.raises(ValueError, match='ImplicitFeatureField: num_layers must be an integer'):
        ImplicitFeatureField(8, num_layers=0)


def test_field_imports_and_fits_without_openmmlab():
    script = r'''
import sys
for name in ('mmcv', 'mmengine', 'mmseg'):
    sys.modules[name] = None  # any import of them now raises ImportError
import torch
from featup_mmseg.layers import ImplicitFitConfig, fit_implicit_features
backbone = torch.nn.Conv2d(3, 8, 8, stride=8)
config = ImplicitFitConfig(steps=2, num_jitters=2, num_views=4, pca_dim=4, max_pad=4,
                           kernel_size=9, hidden_dim=8)
fitted = fit_implicit_features(torch.randn(1, 3, 32, 32), backbone, config)
assert fitted.query(48).shape == (1, 8, 48, 48)
print('torch-only ok')
'''
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'torch-only ok' in result.stdout


# ----------------------------------------------------------------------------------------
# the tool

TIMM_CONFIG = '''
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(type='TIMMBackbone', model_name='resnet18', features_only=True,
                  pretrained=False, out_indices=(2, )),
    decode_head=dict(type='FCNHead', in_channels=128, channels=128, num_convs=0,
                     concat_input=False, num_classes=2, in_index=-1))
'''
TOOL_FIT = ['--preset', 'fast', '--steps', 12, '--num-views', 16, '--num-jitters', 2,
            '--pca-dim', 16, '--heldout-views', 2, '--log-interval', 5, '--device', 'cpu']


def test_tool_end_to_end_with_a_jbu_upsampler(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import featup_mmseg.plugin  # noqa: F401  (registrations)
    image = tmp_path / 'scene.jpg'
    cv2.imwrite(str(image), photograph(300, 400, seed=1))
    init_default_scope('mmseg')
    neck = MODELS.build(Config.fromfile(PRETRAIN_DEMO).model).neck
    upsampler = tmp_path / 'upsampler.pth'
    torch.save({'state_dict': {'neck.' + k: v for k, v in neck.state_dict().items()}},
               upsampler)
    out = tmp_path / 'out'
    result = run_tool('implicit_featup.py', image, PRETRAIN_DEMO, '--upsampler', upsampler,
                      '--fit-size', 96, 128, '--size', 144, 192, '--max-pad', 16, '--out', out,
                      *TOOL_FIT)
    assert 'implicit FeatUp views [16/16]' in result.stdout
    assert 'implicit FeatUp fit [12/12]  loss: ' in result.stdout and 'left: about 0 s' in \
        result.stdout
    for name in ('bilinear', 'JBU', 'implicit'):
        assert f'\n  {name} ' in result.stdout
    saved = torch.load(out / 'scene_implicit.pth', weights_only=True)
    assert saved['features'].shape == (1, 64, 144, 192)
    assert saved['low_res'].shape == (1, 64, 6, 8)
    assert torch.isfinite(saved['features']).all() and saved['fit']['steps'] == 12
    figure = cv2.imread(str(out / 'scene_implicit.png'))
    assert figure.shape == (28 + 144, 5 * 192, 3)
    panels = figure[28:].reshape(144, 5, 192, 3).transpose(1, 0, 2, 3)
    assert all(panel.std() > 0 for panel in panels)
    assert not (panels[2] == panels[4]).all()  # implicit differs from bilinear


def test_tool_with_a_timm_backbone_and_its_bad_arguments(tmp_path):
    image = tmp_path / 'scene.png'
    cv2.imwrite(str(image), photograph(120, 160, seed=2))
    config = tmp_path / 'timm_resnet18.py'
    config.write_text(TIMM_CONFIG)
    out = tmp_path / 'out'
    result = run_tool('implicit_featup.py', image, config, '--fit-size', 64, 80, '--out', out,
                      '--kernel-size', 15, '--max-pad', 8, *TOOL_FIT)
    assert 'JBU' not in result.stdout
    saved = torch.load(out / 'scene_implicit.pth', weights_only=True)
    assert saved['features'].shape == (1, 128, 64, 80)
    assert saved['low_res'].shape == (1, 128, 8, 10)  # resnet18's layer 2: stride 8
    for args, message in (
        (['--steps', 0], 'error: steps must be an integer >= 1, got 0'),
        (['--upsampler', config], '--upsampler needs a model with a JBUNeck'),
    ):
        command = [ROOT / 'tools/implicit_featup.py', image, config, '--fit-size', 64, 80, *args]
        failed = subprocess.run([sys.executable, *map(str, command)],
                                capture_output=True, text=True, cwd=ROOT)
        assert failed.returncode != 0 and message in failed.stderr, failed.stderr
