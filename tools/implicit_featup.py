"""Implicit FeatUp: one image's backbone features at any resolution (paper section 3.2).

Fits FeatUp's implicit feature field to IMAGE against the backbone of CONFIG's model
(random weights unless --checkpoint) and writes to --out:

    <image>_implicit.pth   'features': (1, C, H, W) at --size, in the backbone's feature
                           space; 'low_res': the backbone's features; the settings
                           (torch.load(..., weights_only=True) reads it)
    <image>_implicit.png   image | low-res | bilinear | JBU (with --upsampler) | implicit,
                           coloured by one PCA fitted on the low-res features

and prints the fit's progress and each upsampler's error on new (held-out) views.

    python tools/implicit_featup.py IMAGE CONFIG [--checkpoint M.pth] [--upsampler U.pth]
        [--size H W] [--fit-size H W] [--preset {paper,fast}] [--steps N] [--out DIR]

The features are the backbone's output --in-index; for a model with a JBUNeck, the level
(normalised if configured) that the neck upsamples. --upsampler loads a JBUNeck's weights
as tools/visualize_features.py does. --fit-size defaults to the config's input size's
shorter side (224 if it names none), the image's aspect ratio kept, rounded to a multiple
of the backbone's stride (a fixed-size backbone's own size); a --fit-size the backbone's
feature grid does not tile is refused with the sizes to use. --size, the output, may be
any size. The figure is at most FIGURE_SIDE px on its panels' longer side. Inputs and
outputs are checked before the model is built.
"""
import argparse
import dataclasses
from pathlib import Path

import cv2
import torch
import torch.nn.functional as F
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmseg.registry import MODELS
from visualize_features import load_upsampler

import featup_mmseg.plugin  # noqa: F401  (registrations)
from featup_mmseg.engine.hooks import find_targets
from featup_mmseg.file_checks import (check_input_file, check_output_dir, check_output_file,
                                      write_image)
from featup_mmseg.layers import sample_jitter
from featup_mmseg.layers.implicit_field import (IMPLICIT_PRESETS, ImplicitFitConfig,
                                                fit_implicit_features, view_reconstruction_error)
from featup_mmseg.models.input_size import backbone_input_size, config_input_size
from featup_mmseg.visualization import feature_figure

# FeatUp's image load size (paper, Table 7): the fit size's shorter side for configs that
# name no input size.
LOAD_SIZE = 224
# The figure's panels are at most this many pixels on their longer side (the features are
# saved at --size, which may be far larger).
FIGURE_SIDE = 512
BUDGET_OPTIONS = ('steps', 'num_jitters', 'num_views', 'pca_dim', 'kernel_size', 'max_pad',
                  'tv_weight')


def has_jbu_neck(model) -> bool:
    neck = getattr(model, 'neck', None)
    return getattr(neck, 'requires_image', False) and hasattr(neck, 'upsampler')


def backbone_features(model, in_index: int):
    """images -> the (B, C, h, w) features to upsample: a JBUNeck's input level, else the
    backbone's output ``in_index``."""
    if has_jbu_neck(model):
        neck_features = find_targets(model, 'neck')[0].features
        return lambda images: neck_features(images)[0]

    def features(images):
        outputs = model.backbone(images)
        if isinstance(outputs, torch.Tensor):
            return outputs
        try:
            return outputs[in_index]
        except IndexError:
            raise SystemExit(f'--in-index {in_index} is out of range for a backbone with '
                             f'{len(outputs)} outputs') from None

    return features


def model_input(model, image, size):
    """(normalised (1, 3, H, W) input, resized BGR image) of a BGR image at size (H, W)."""
    height, width = size
    shrink = height * width < image.shape[0] * image.shape[1]
    resized = cv2.resize(image, (width, height),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    batch = dict(inputs=[torch.from_numpy(resized).permute(2, 0, 1)])
    with torch.no_grad():
        inputs = model.data_preprocessor(batch, False)['inputs'][..., :height, :width]
    return inputs, resized


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='mmseg config whose model has the backbone')
    parser.add_argument('--checkpoint', help='model (or backbone) weights')
    parser.add_argument('--upsampler', help="JBU neck weights: add the JBU's features")
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='size of the output features (default: the fit size)')
    parser.add_argument('--fit-size', type=int, nargs=2, metavar=('H', 'W'),
                        help="size the image is fitted at (default: the config's input size's "
                        'shorter side, aspect ratio kept)')
    parser.add_argument('--in-index', type=int, default=-1,
                        help='backbone output to upsample (models without a JBUNeck)')
    parser.add_argument('--preset', choices=tuple(IMPLICIT_PRESETS), default='paper',
                        help="budget: 'paper' (Table 7: 2000 steps, 10 jitters) or 'fast'")
    for name in BUDGET_OPTIONS:
        kind = float if name == 'tv_weight' else int
        parser.add_argument('--' + name.replace('_', '-'), type=kind,
                            help='override the preset (0 switches the TV prior off)'
                            if name == 'tv_weight' else 'override the preset')
    parser.add_argument('--no-color-features', action='store_true',
                        help='Fourier features of the coordinates only (ablation)')
    parser.add_argument('--heldout-views', type=int, default=8,
                        help='new views on which to compare the upsamplers (0: none)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--log-interval', type=int, default=50, help='steps between reports')
    parser.add_argument('--out', type=Path, default=Path('work_dirs/implicit_featup'))
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args()
    overrides = {name: getattr(args, name) for name in BUDGET_OPTIONS
                 if getattr(args, name) is not None}
    if args.no_color_features:
        overrides['color_features'] = False
    try:
        args.fit_config = ImplicitFitConfig.preset(args.preset, **overrides)
    except ValueError as err:
        parser.error(str(err).replace('ImplicitFitConfig: ', ''))
    for name in ('size', 'fit_size'):
        if getattr(args, name) and min(getattr(args, name)) < 1:
            parser.error(f'--{name.replace("_", "-")} must be positive, got {getattr(args, name)}')
    if args.heldout_views < 0 or args.log_interval < 1:
        parser.error('--heldout-views must be >= 0 and --log-interval >= 1')
    args.bgr = cv2.imread(args.image)
    if args.bgr is None:
        parser.error(f'cannot read image {args.image}')
    stem = Path(args.image).stem
    args.features_path = args.out / f'{stem}_implicit.pth'
    args.figure_path = args.out / f'{stem}_implicit.png'
    try:
        for option in ('checkpoint', 'upsampler'):
            if getattr(args, option):
                check_input_file(getattr(args, option), '--' + option)
        check_output_dir(args.out)
        check_output_file(args.features_path)
        check_output_file(args.figure_path, image=True)
    except OSError as err:
        parser.error(str(err))
    return args, parser


def fit_size(args, parser, cfg, model, backbone):
    """--fit-size, checked against the backbone, or the default: the config's input size's
    shorter side, the image's aspect ratio kept, rounded to the backbone's stride."""
    config_size = config_input_size(cfg) or (LOAD_SIZE, LOAD_SIZE)
    height, width = args.bgr.shape[:2]
    scale = min(config_size) / min(height, width)
    default = (max(1, round(height * scale)), max(1, round(width * scale)))
    device = next(model.parameters()).device
    try:
        return list(backbone_input_size('--fit-size', args.fit_size, default, backbone,
                                        model.backbone, config_size, device))
    except ValueError as err:
        parser.error(str(err))


def figure_size(size):
    """``size`` scaled down to at most FIGURE_SIDE on its longer side."""
    scale = min(1.0, FIGURE_SIDE / max(size))
    return tuple(max(1, round(side * scale)) for side in size)


def main():
    args, parser = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    torch.manual_seed(args.seed)  # random weights, the fit's initialisation and dropouts
    model = MODELS.build(cfg.model).to(args.device).eval()
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, map_location='cpu', strict=False)
    if args.upsampler:
        if not has_jbu_neck(model):
            parser.error(f'--upsampler needs a model with a JBUNeck; {args.config} has none')
        load_upsampler(model.neck, args.upsampler)
        model.check_trained_backbone()  # warns if pretrained with another
    backbone = backbone_features(model, args.in_index)
    args.fit_size = fit_size(args, parser, cfg, model, backbone)
    args.size = args.size or args.fit_size
    fit_image, _ = model_input(model, args.bgr, args.fit_size)
    out_image, _ = model_input(model, args.bgr, args.size)
    shown_size = figure_size(args.size)
    shown_image, shown = model_input(model, args.bgr, shown_size)

    def report(progress):
        if progress.done == progress.total or \
                progress.stage == 'fit' and (progress.done == 1 or
                                             progress.done % args.log_interval == 0):
            print(progress, flush=True)

    config = args.fit_config
    print(f'fitting at {tuple(args.fit_size)}: {config}')
    try:
        fitted = fit_implicit_features(fit_image, backbone, config, report,
                                       torch.Generator().manual_seed(args.seed))
    except (ValueError, FloatingPointError) as err:
        raise SystemExit(f'implicit_featup: {err}') from None
    low_res = fitted.low_res
    upsampled = dict(bilinear=lambda size, image: F.interpolate(
        low_res, size, mode='bilinear', align_corners=False))
    if args.upsampler:
        upsampled['JBU'] = lambda size, image: model.neck.upsampler(low_res, image,
                                                                    output_size=size)
    upsampled['implicit'] = lambda size, image: fitted.query(size, image)
    implicit = fitted.query(tuple(args.size), out_image)
    # the panels at the figure's size; the implicit one from the features at --size
    with torch.no_grad():
        panels = [(name, up(shown_size, shown_image)) for name, up in upsampled.items()
                  if name != 'implicit'] + [('implicit', implicit)]
    if args.heldout_views:
        generator = torch.Generator().manual_seed(args.seed + 1)
        jitters = [sample_jitter(*args.fit_size, config.max_pad, config.max_zoom, generator)
                   for _ in range(args.heldout_views)]
        print(f'mean squared error on {args.heldout_views} new views, high-res features '
              'jittered and area-averaged | through the learned downsampler:')
        for name, up in upsampled.items():
            with torch.no_grad():
                high_res = up(tuple(args.fit_size), fit_image)
            errors = [view_reconstruction_error(high_res, fit_image, backbone, jitters, down)
                      for down in (None, fitted.downsample)]
            print(f'  {name:9s} {errors[0]:.5f} | {errors[1]:.5f}')

    try:
        torch.save(
            dict(features=implicit.cpu(), low_res=low_res.cpu(), image=str(args.image),
                 config=str(args.config), size=list(args.size), fit_size=list(args.fit_size),
                 pca_dim=fitted.pca_dim, fit=dataclasses.asdict(config), losses=fitted.losses),
            args.features_path)
        figure = feature_figure(shown, [(f'low-res {tuple(low_res.shape[-2:])}', low_res)] +
                                panels, reference=low_res)
        write_image(args.figure_path, figure)
    except (OSError, RuntimeError) as err:  # torch.save reports a full device as RuntimeError
        raise SystemExit(f'implicit_featup.py: error: {err}') from None
    print(f'wrote {args.features_path} (features {tuple(implicit.shape)}) and '
          f'{args.figure_path}')


if __name__ == '__main__':
    main()
