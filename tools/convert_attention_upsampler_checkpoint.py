"""Convert AnyUp's or NAF's published weights for featup_mmseg.

The source is the file the authors' torch.hub entry loads, a bare state_dict:
AnyUp's ``anyup_paper.pth`` (DINOv2 ViT-S/14) or ``anyup_multi_backbone.pth``
(github.com/wimmerth/anyup, releases), NAF's ``naf_release.pth``
(github.com/valeoai/NAF, releases). The file is read with ``torch.load(weights_only=True)``
and checked strictly against the method's layout (every missing, unexpected or mis-shaped
key is reported, nothing is written then). The output holds ``state_dict`` with
``upsampler.*`` keys, the layout that ``FeatureUpsamplingNeck`` and
``ImageGuidedOutputUpsampler`` with ``upsampler=dict(type='AnyUp' | 'NAF')`` load strictly
through ``init_cfg=dict(type='Pretrained', checkpoint=OUT)``. Errors are reported in one
line on stderr, with exit status 1.

    python tools/convert_attention_upsampler_checkpoint.py anyup anyup_paper.pth anyup.pth
"""
import argparse
import pickle
import sys
from pathlib import Path

import torch

from featup_mmseg.file_checks import check_input_file, check_output_file, one_line
from featup_mmseg.layers import load_state_dict_strict, read_state_dict
from featup_mmseg.layers.attention_upsamplers import (NAF, AnyUp, convert_published_anyup,
                                                      convert_published_naf)

METHODS = {
    'anyup': (AnyUp, convert_published_anyup),
    'naf': (NAF, convert_published_naf),
}


def convert(method: str, source: Path, destination: Path,
            trust_checkpoint: bool = False) -> dict:
    """Writes the converted checkpoint and returns its ``meta``."""
    module_type, convert_published = METHODS[method]
    state_dict = convert_published(read_state_dict(source, trust_checkpoint))
    module = module_type()  # the published weights' configuration: the defaults
    load_state_dict_strict(module, state_dict, str(source))
    meta = {
        'source': str(source),
        'method': module_type.__name__,
        'parameters': sum(p.numel() for p in module.parameters()),
    }
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': {f'upsampler.{key}': value
                               for key, value in module.state_dict().items()},
                'meta': {'featup_mmseg': meta}}, destination)
    return meta


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('method', choices=list(METHODS), help='whose weights the source holds')
    parser.add_argument('source', type=Path,
                        help="the published file, e.g. 'anyup_paper.pth', 'naf_release.pth'")
    parser.add_argument('destination', type=Path, help='where to write the converted weights')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle arbitrary Python objects from the source (only for '
                        'files from a source you trust; needed when it holds more than tensors)')
    args = parser.parse_args()
    try:
        check_input_file(args.source, 'source')
        check_output_file(args.destination, 'destination')
        meta = convert(args.method, args.source, args.destination, args.trust_checkpoint)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        sys.exit(f'{parser.prog}: error: {one_line(err)}')
    kind = meta['method']
    print(f'wrote {args.destination}: {kind}, {meta["parameters"]:,} parameters')
    print(f'use in a config: neck=dict(type="FeatureUpsamplingNeck", in_channels=..., '
          f'upsampler=dict(type="{kind}"), init_cfg=dict(type="Pretrained", '
          f'checkpoint="{args.destination}"), ...)')


if __name__ == '__main__':
    main()
