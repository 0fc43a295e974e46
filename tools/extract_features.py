"""Upsampled features of images, a folder or a glob, saved as tensors.

For each image, the backbone's low-res features and their upsampling by the config's
image-guided neck (e.g. a JBUNeck: FeatUp's JBU, with its pretrained weights through
--upsampler), or with --implicit by a per-image implicit FeatUp fit:

    OUT/<name>.pt        {'features': (C, H, W), 'low_res': (C, h, w), 'image', 'size',
                          'config', 'method'}  (torch.load(..., weights_only=True) reads it)
    OUT/<name>.npy, OUT/<name>_low_res.npy    with --format npy
    OUT/<name>_pca.png   with --pca: image | low-res | upsampled, coloured by one PCA
                         fitted on the low-res features

    python tools/extract_features.py INPUT [INPUT ...] CONFIG [--checkpoint M.pth]
        [--upsampler U.pth] [--size H W] [--out DIR] [--format {pt,npy}] [--half]
        [--pca] [--batch-size N] [--implicit [--preset {paper,fast}] [--steps N]]
        [--device DEV]

An INPUT is an image file, a folder (its images, subfolders included) or a quoted glob
pattern ('photos/*.jpg'); <name> is the image's path relative to the inputs' common
folder, without its ending, so names never collide. Images are resized to --size,
default the config's input size rounded to the backbone's stride (a fixed-size
backbone's own size); a --size the backbone's feature grid does not tile is refused
with the sizes to use. The neck's features are at its configured output size (the
image size for FeatUp's out_stride=1); implicit ones at the image size. --checkpoint
loads model (or backbone) weights, --upsampler the neck's (as
tools/visualize_features.py); a warning says when the upsampler was pretrained with
another backbone. Inputs and the output folder are checked before the model is built.
"""
import argparse
import glob
import os.path as osp
import warnings
from pathlib import Path
from typing import List

import cv2
import numpy as np
import torch
from implicit_featup import backbone_features, has_jbu_neck, model_input
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmengine.utils import ProgressBar
from mmseg.registry import MODELS
from visualize_features import load_upsampler

import featup_mmseg.plugin  # noqa: F401  (registrations)
from featup_mmseg.datasets.image_folder import IMAGE_SUFFIXES
from featup_mmseg.file_checks import check_input_file, check_output_dir, write_image
from featup_mmseg.layers.implicit_field import (IMPLICIT_PRESETS, ImplicitFitConfig,
                                                fit_implicit_features)
from featup_mmseg.models.backbone_record import (backbone_weights_source,
                                                random_backbone_message)
from featup_mmseg.models.input_size import backbone_input_size, config_input_size
from featup_mmseg.visualization import feature_figure

# FeatUp's image load size, for configs that name no input size
DEFAULT_SIZE = (224, 224)
GLOB_CHARACTERS = '*?['


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def find_images(inputs: List[str]) -> List[Path]:
    """The image files the inputs name, each once, in order.

    Raises:
        ValueError: naming an input that is no image, folder or matching pattern.
    """
    found = []
    for item in inputs:
        if any(c in item for c in GLOB_CHARACTERS) and not Path(item).exists():
            images = sorted(Path(p) for p in glob.glob(item, recursive=True) if is_image(Path(p)))
            what = 'the pattern matches no image'
        elif Path(item).is_dir():
            images = sorted(p for p in Path(item).rglob('*') if is_image(p))
            what = 'the folder holds no image'
        else:
            check_input_file(item, 'INPUT')
            images = [Path(item)] if Path(item).suffix.lower() in IMAGE_SUFFIXES else []
            what = f"not an image (file endings {', '.join(IMAGE_SUFFIXES)})"
        if not images:
            raise ValueError(f'INPUT {item}: {what}')
        found.extend(images)
    return list(dict.fromkeys(path.resolve() for path in found))


def output_names(images: List[Path]) -> List[str]:
    """Each image's path relative to the images' common folder, without its ending unless
    another image has the same name with another ending (a.jpg, a.png)."""
    root = Path(osp.commonpath([str(path.parent) for path in images]))
    names = [path.relative_to(root).with_suffix('').as_posix() for path in images]
    return [name if names.count(name) == 1 else path.relative_to(root).as_posix()
            for name, path in zip(names, images)]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image files, folders or quoted glob patterns')
    parser.add_argument('config', help='config whose model has an image-guided neck, or any '
                        'model with --implicit')
    parser.add_argument('--checkpoint', help='model (or backbone) weights')
    parser.add_argument('--upsampler', help='the neck\'s weights (JBUNeck)')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help="the size images are resized to (default: the config's input "
                        'size)')
    parser.add_argument('--out', type=Path, default=Path('work_dirs/features'),
                        help='output folder')
    parser.add_argument('--format', choices=('pt', 'npy'), default='pt')
    parser.add_argument('--half', action='store_true', help='save float16 features')
    parser.add_argument('--pca', action='store_true', help='also write a PCA picture')
    parser.add_argument('--batch-size', type=int, default=4, help='images per forward pass')
    parser.add_argument('--implicit', action='store_true',
                        help='fit implicit FeatUp per image instead of running the neck')
    parser.add_argument('--preset', choices=tuple(IMPLICIT_PRESETS), default='paper',
                        help='budget of the implicit fit')
    parser.add_argument('--steps', type=int, help="override the preset's steps")
    parser.add_argument('--in-index', type=int, default=-1,
                        help='backbone output to upsample (--implicit, models without a neck)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args()
    if args.batch_size < 1:
        parser.error(f'--batch-size must be at least 1, got {args.batch_size}')
    if args.size and min(args.size) < 1:
        parser.error(f'--size must be positive, got {args.size}')
    overrides = {} if args.steps is None else dict(steps=args.steps)
    try:
        args.fit_config = ImplicitFitConfig.preset(args.preset, **overrides)
    except ValueError as err:
        parser.error(str(err).replace('ImplicitFitConfig: ', ''))
    if args.implicit and args.upsampler:
        parser.error('--upsampler is for the neck; --implicit fits its own upsampling')
    try:
        args.images = find_images(args.inputs)
        for option in ('checkpoint', 'upsampler'):
            if getattr(args, option):
                check_input_file(getattr(args, option), '--' + option)
        check_output_dir(args.out)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    return args, parser


def build_model(args, parser, cfg):
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    torch.manual_seed(args.seed)  # random weights (warned about) and the implicit fit
    model = MODELS.build(cfg.model).to(args.device).eval()
    if not args.implicit and not has_jbu_neck(model):
        parser.error(f'{args.config}: the model has no image-guided neck (model.neck, e.g. '
                     'JBUNeck) to upsample with; use --implicit to fit implicit FeatUp')
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, map_location='cpu', strict=False)
    elif backbone_weights_source(cfg.model.get('backbone'), cfg.get('load_from')) is None:
        warnings.warn(random_backbone_message('extract_features.py', cfg.model.get('backbone'))
                      + ' or pass --checkpoint', UserWarning)
    if args.upsampler:
        if not hasattr(model.neck, 'load_weights'):
            parser.error(f'--upsampler loads a JBUNeck\'s weights; {type(model.neck).__name__} '
                         "loads its own through model.neck.init_cfg (--cfg-options)")
        load_upsampler(model.neck, args.upsampler)
    if has_jbu_neck(model):
        model.check_trained_backbone()  # warns if pretrained with another backbone
    return model


def save(args, name: str, image, low_res: torch.Tensor, features: torch.Tensor,
         method: str) -> None:
    """Writes one image's features (and picture) under ``args.out``."""
    dtype = torch.float16 if args.half else torch.float32
    low_res, features = (t.detach().to('cpu', dtype) for t in (low_res, features))
    path = args.out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.format == 'pt':
        torch.save(dict(features=features, low_res=low_res, image=str(image),
                        size=list(features.shape[-2:]), config=str(args.config), method=method),
                   f'{path}.pt')
    else:
        np.save(f'{path}.npy', features.numpy())
        np.save(f'{path}_low_res.npy', low_res.numpy())
    if args.pca:
        picture = cv2.resize(cv2.imread(str(image)), tuple(features.shape[-1:-3:-1]),
                             interpolation=cv2.INTER_AREA)
        figure = feature_figure(picture, [(f'low-res {tuple(low_res.shape[-2:])}', low_res[None]),
                                          (method, features[None])], reference=low_res[None])
        write_image(f'{path}_pca.png', figure)


def main():
    args, parser = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = build_model(args, parser, cfg)
    features = backbone_features(model, args.in_index)
    config_size = config_input_size(cfg) or DEFAULT_SIZE
    try:
        size = backbone_input_size('--size', args.size, config_size, features, model.backbone,
                                   config_size, args.device)
    except ValueError as err:
        parser.error(str(err))
    names = output_names(args.images)
    method = 'implicit' if args.implicit else type(model.neck).__name__
    print(f'{len(args.images)} images at {size[0]} x {size[1]} -> {args.out} ({method})')
    progress = ProgressBar(len(args.images))
    batch_size = 1 if args.implicit else args.batch_size
    for start in range(0, len(args.images), batch_size):
        images = args.images[start:start + batch_size]
        pictures = [cv2.imread(str(path)) for path in images]
        unreadable = [str(path) for path, bgr in zip(images, pictures) if bgr is None]
        if unreadable:
            raise SystemExit(f'extract_features.py: error: cannot read image {unreadable[0]}')
        inputs = torch.cat([model_input(model, bgr, size)[0] for bgr in pictures])
        if args.implicit:
            fitted = fit_implicit_features(inputs, features, args.fit_config,
                                           generator=torch.Generator().manual_seed(args.seed))
            low_res, upsampled = fitted.low_res, fitted.query(tuple(size), inputs)
        else:
            with torch.no_grad():
                low_res = model.neck.select(model.backbone(inputs))
                upsampled = model.neck.upsample(low_res, inputs)
        for offset, image in enumerate(images):
            try:
                save(args, names[start + offset], image, low_res[offset], upsampled[offset],
                     method)
            except (OSError, RuntimeError) as err:  # torch.save: a full device is a RuntimeError
                raise SystemExit(f'extract_features.py: error: {err}') from None
            progress.update()
    print(f'\nwrote the features of {len(args.images)} images to {args.out}')


if __name__ == '__main__':
    main()
