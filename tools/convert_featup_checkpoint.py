"""Convert a FeatUp JBU checkpoint (PyTorch Lightning .ckpt) for featup_mmseg.

The output holds ``state_dict`` with ``upsampler.*`` (the JBU stack) and, for checkpoints
trained with use_norm=True, ``norm.norm.*`` (the backbone's channel LayerNorm), i.e. the
parameter names of featup_mmseg's JBUNeck, which loads it strictly through
``init_cfg=dict(type='Pretrained', checkpoint=OUT)``. Both of FeatUp's layouts convert:
with the norm (backbone under ``model.0.``) and without (``no_norm`` checkpoints, backbone
under ``model.``); ``--use-norm`` requires one (default: auto, whichever it is). Backbone
and training-only weights (downsampler, uncertainty network) are dropped and counted.
Errors are reported in one line on stderr, with exit status 1.

    python tools/convert_featup_checkpoint.py vit_jbu_stack_cocostuff.ckpt vit_jbu.pth
"""
import argparse
import pickle
import sys
from pathlib import Path

import torch

from featup_mmseg.file_checks import check_input_file, check_output_file, one_line
from featup_mmseg.layers import build_featup_upsampler

USE_NORM = {'auto': 'auto', 'yes': True, 'no': False}


def convert(source: Path, destination: Path, trust_checkpoint: bool = False,
            use_norm='auto') -> dict:
    """Writes the converted checkpoint and returns its ``meta``."""
    stack, norm, weights = build_featup_upsampler(source, trust_checkpoint=trust_checkpoint,
                                                  use_norm=use_norm)
    state_dict = {f'upsampler.{key}': value for key, value in stack.state_dict().items()}
    if norm is not None:
        state_dict.update({f'norm.{key}': value for key, value in norm.state_dict().items()})
    meta = {
        'source': str(source),
        'feat_dim': weights.feat_dim,
        'feature_norm': norm is not None,
        'stack': weights.stack_config(),
        'skipped': weights.skipped,
    }
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': state_dict, 'meta': {'featup_mmseg': meta}}, destination)
    return meta


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source', type=Path, help="FeatUp checkpoint, e.g. 'vit_jbu_stack.ckpt'")
    parser.add_argument('destination', type=Path, help='where to write the converted weights')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle arbitrary Python objects from the source (only for '
                        'files from a source you trust; needed when it holds more than tensors)')
    parser.add_argument('--use-norm', choices=list(USE_NORM), default='auto',
                        help="whether the checkpoint was trained with FeatUp's channel norm "
                        '(use_norm=True, the default of its published weights) or not '
                        '(no_norm); auto: whichever layout it has')
    args = parser.parse_args()
    try:
        check_input_file(args.source, 'source')
        check_output_file(args.destination, 'destination')
        meta = convert(args.source, args.destination, args.trust_checkpoint,
                       USE_NORM[args.use_norm])
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        sys.exit(f'{parser.prog}: error: {one_line(err)}')
    stack = meta['stack']
    print(f'wrote {args.destination}: JBU stack of {stack["num_stages"]} stages for '
          f'{meta["feat_dim"]}-channel features, backbone channel norm: {meta["feature_norm"]}')
    skipped = ', '.join(f'{count} {what}' for what, count in meta['skipped'].items())
    print(f'skipped tensors: {skipped or "none"}')
    print('use in a config: neck=dict(type="JBUNeck", in_channels=%d, feature_norm=%s, '
          'init_cfg=dict(type="Pretrained", checkpoint="%s"), ...)' %
          (meta['feat_dim'], meta['feature_norm'], args.destination))


if __name__ == '__main__':
    main()
