"""Visualise a backbone's features and their upsampling (FeatUp paper, Figure 5 style).

Writes a PNG with the image, the backbone's low-res features, the features upsampled
bilinearly and by the JBU neck's upsampler, all mapped to RGB by one PCA fitted on the
low-res features. The config's model needs a JBUNeck (e.g.
configs/featup_pretrain/vit-s16_featup-jbu-pretrain_224px.py). Without checkpoints the
weights are random.

    python tools/visualize_features.py IMAGE CONFIG [--checkpoint MODEL.pth]
        [--upsampler UPSAMPLER.pth] [--size H W] [--out features.png]

--size defaults to the config's input size (its data preprocessor's size, crop_size or
the backbone's img_size; 224 x 224 if it names none) rounded to a multiple of the
backbone's stride; a --size the backbone's feature grid does not tile is refused with the
sizes to use. --checkpoint loads model (or backbone) weights as mmengine does, reporting
any mismatch; --upsampler loads the neck's weights strictly: the output of
tools/pretrain_upsampler.py (keys 'neck.*') or of tools/convert_featup_checkpoint.py
(keys 'upsampler.*', 'norm.*'). The image and --out are checked before the model is built.
"""
import argparse
from pathlib import Path

import cv2
import torch
import torch.nn.functional as F
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader
from mmseg.registry import MODELS

import featup_mmseg.plugin  # noqa: F401  (registrations)
from featup_mmseg.models.backbone_record import trained_backbone
from featup_mmseg.models.input_size import backbone_input_size, config_input_size
from featup_mmseg.file_checks import check_input_file, check_output_file, write_image
from featup_mmseg.visualization import feature_figure

# FeatUp's image load size, for configs that name no input size
DEFAULT_SIZE = (224, 224)


def load_upsampler(neck, path: str) -> None:
    """Strictly loads neck weights, keyed 'neck.*' (pretraining) or as the neck (converted),
    and keeps the record of the backbone they were pretrained with: the model's first
    forward pass warns if its backbone is another."""
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    state_dict = checkpoint.get('state_dict', checkpoint)
    prefix = 'neck.' if any(key.startswith('neck.') for key in state_dict) else None
    neck.load_weights(state_dict, prefix, f'upsampler checkpoint {path}')
    neck.trained_backbone = trained_backbone(checkpoint, path)


def read_image(parser, path: str):
    """The BGR image at ``path``, or a parser error."""
    image = cv2.imread(path)
    if image is None:
        parser.error(f'cannot read image {path}')
    return image


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config whose model has a JBUNeck')
    parser.add_argument('--checkpoint', help='model or backbone weights')
    parser.add_argument('--upsampler', help='JBU neck weights')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help="resize the image to this size first (default: the config's "
                        'input size)')
    parser.add_argument('--out', type=Path, default=Path('features.png'))
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args()
    image = read_image(parser, args.image)
    try:
        for option in ('checkpoint', 'upsampler'):
            if getattr(args, option):
                check_input_file(getattr(args, option), '--' + option)
        check_output_file(args.out, '--out', image=True)
    except OSError as err:
        parser.error(str(err))

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(cfg.model).eval()
    neck = getattr(model, 'neck', None)
    if not getattr(neck, 'requires_image', False) or not hasattr(neck, 'upsampler'):
        raise SystemExit(f'{args.config}: the model needs a JBUNeck (model.neck) to visualise '
                         'its upsampling')
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, map_location='cpu', strict=False)
    if args.upsampler:
        load_upsampler(neck, args.upsampler)
        model.check_trained_backbone()  # warns if pretrained with another

    def features(inputs):
        return neck.select(model.backbone(inputs))

    config_size = config_input_size(cfg) or DEFAULT_SIZE
    try:
        height, width = backbone_input_size('--size', args.size, config_size, features,
                                            model.backbone, config_size)
    except ValueError as err:
        parser.error(str(err))
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    batch = dict(inputs=[torch.from_numpy(image).permute(2, 0, 1)])
    with torch.no_grad():
        inputs = model.data_preprocessor(batch, False)['inputs'][..., :height, :width]
        low_res = features(inputs)
        bilinear = F.interpolate(low_res, (height, width), mode='bilinear',
                                 align_corners=False)
        jbu = neck.upsampler(low_res, inputs, output_size=(height, width))
    figure = feature_figure(image, [(f'low-res {tuple(low_res.shape[-2:])}', low_res),
                                    ('bilinear', bilinear), ('JBU', jbu)], reference=low_res)
    try:
        write_image(args.out, figure)
    except OSError as err:
        raise SystemExit(f'visualize_features.py: error: {err}') from None
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
