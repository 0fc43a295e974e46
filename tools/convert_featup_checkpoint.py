"""Convert a FeatUp JBU checkpoint (PyTorch Lightning .ckpt) for featup_mmseg.

The output holds ``state_dict`` with ``upsampler.*`` (the JBU stack) and, for checkpoints
trained with use_norm=True, ``norm.norm.*`` (the backbone's channel LayerNorm), i.e. the
parameter names of featup_mmseg's JBUNeck, which loads it strictly through
``init_cfg=dict(type='Pretrained', checkpoint=OUT)``. Backbone and training-only weights
(downsampler, uncertainty network) are dropped and counted.

    python tools/convert_featup_checkpoint.py vit_jbu_stack_cocostuff.ckpt vit_jbu.pth
"""
import argparse
from pathlib import Path

import torch

from featup_mmseg.layers import build_featup_upsampler


def convert(source: Path, destination: Path, trust_checkpoint: bool = False) -> dict:
    """Writes the converted checkpoint and returns its ``meta``."""
    stack, norm, weights = build_featup_upsampler(source, trust_checkpoint=trust_checkpoint)
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
    args = parser.parse_args()
    meta = convert(args.source, args.destination, args.trust_checkpoint)
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
