"""Loading FeatUp's published JBU checkpoints (spec section 3), strictly.

FeatUp publishes PyTorch Lightning checkpoints whose ``state_dict`` holds
``upsampler.*`` (the JBU stack), ``model.1.norm.*`` (the channel LayerNorm applied to the
backbone output when trained with use_norm=True), ``model.0.*`` (the frozen backbone) and
the training-only ``downsampler.*`` and ``scale_net.*``. Only the first two are needed to
upsample; the rest is reported as skipped, and anything else is an error.
"""
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .channel_norm import ChannelNorm
from .jbu_stack import JBUStack

UPSAMPLER_PREFIX = 'upsampler.'
NORM_PREFIX = 'model.1.'
SKIPPED_PREFIXES = {
    'model.0.': 'backbone',
    'downsampler.': 'training-only downsampler',
    'scale_net.': 'training-only uncertainty network',
}

CheckpointSource = Union[str, Path, Mapping]


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           source: str) -> None:
    """Loads ``state_dict`` into ``module`` only if keys and shapes match exactly.

    Raises:
        ValueError: listing every missing, unexpected and mis-shaped key; nothing is
            loaded then.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f'{key}: {tuple(state_dict[key].shape)} in {source}, '
        f'{tuple(expected[key].shape)} in {type(module).__name__}'
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        report = [f'{source} does not match {type(module).__name__}; nothing was loaded.']
        for title, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                            ('mis-shaped keys', mismatched)):
            if keys:
                report.append(f'{len(keys)} {title}:\n  ' + '\n  '.join(keys))
        raise ValueError('\n'.join(report))
    module.load_state_dict(state_dict, strict=True)


def read_state_dict(checkpoint: CheckpointSource,
                    trust_checkpoint: bool = False) -> Dict[str, torch.Tensor]:
    """The ``state_dict`` of a checkpoint file (or of an already loaded checkpoint dict).

    Files load with ``torch.load(weights_only=True)`` unless ``trust_checkpoint``: a
    checkpoint that pickles other Python objects then fails with advice instead of
    running code from the file.
    """
    if isinstance(checkpoint, Mapping):
        loaded = checkpoint
    else:
        try:
            loaded = torch.load(checkpoint, map_location='cpu',
                                weights_only=not trust_checkpoint)
        except pickle.UnpicklingError as err:
            if trust_checkpoint:
                raise
            detail = next((line.strip() for line in str(err).splitlines()
                           if 'Unsupported global' in line), type(err).__name__)
            raise ValueError(
                f'{checkpoint} holds Python objects besides tensors, so it was not loaded with '
                f'weights_only=True ({detail}). If you trust its source, pass '
                'trust_checkpoint=True (--trust-checkpoint on the command line).') from err
    state_dict = loaded.get('state_dict', loaded)
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError('checkpoint: expected a state_dict of tensors (or a dict holding one '
                         "under 'state_dict')")
    return dict(state_dict)


@dataclass
class FeatUpWeights:
    """The parts of a FeatUp checkpoint an upsampler needs, keyed as our modules expect."""
    upsampler: Dict[str, torch.Tensor]
    norm: Optional[Dict[str, torch.Tensor]]
    skipped: Dict[str, int] = field(default_factory=dict)

    @property
    def feat_dim(self) -> int:
        return self.upsampler['fixup_proj.1.weight'].shape[0]

    def stack_config(self) -> dict:
        """JBUStack constructor arguments that reproduce the checkpoint's shapes."""
        key_dim, guidance_dim = self.upsampler['up1.range_proj.0.weight'].shape[:2]
        taps = self.upsampler['up1.fixup_proj.3.weight'].shape[0]
        stages = {int(m.group(1)) for key in self.upsampler
                  if (m := re.match(r'up(\d+)\.', key))}
        return dict(feat_dim=self.feat_dim, num_stages=len(stages), guidance_dim=guidance_dim,
                    key_dim=key_dim, radius=(int(round(taps**0.5)) - 1) // 2)


def split_featup_state_dict(state_dict: Mapping[str, torch.Tensor]) -> FeatUpWeights:
    """Sorts a FeatUp state_dict into upsampler, norm and skipped parts.

    Raises:
        ValueError: for keys FeatUp checkpoints do not have, or without upsampler weights.
    """
    upsampler, norm, skipped, unknown = {}, {}, {}, []
    for key, value in state_dict.items():
        if key.startswith(UPSAMPLER_PREFIX):
            upsampler[key[len(UPSAMPLER_PREFIX):]] = value
        elif key.startswith(NORM_PREFIX):
            norm[key[len(NORM_PREFIX):]] = value
        else:
            prefix = next((p for p in SKIPPED_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                unknown.append(key)
            else:
                skipped[SKIPPED_PREFIXES[prefix]] = skipped.get(SKIPPED_PREFIXES[prefix], 0) + 1
    if unknown:
        raise ValueError(f'not a FeatUp JBU checkpoint: {len(unknown)} unexpected keys:\n  ' +
                         '\n  '.join(sorted(unknown)))
    required = ('fixup_proj.1.weight', 'up1.range_proj.0.weight', 'up1.fixup_proj.3.weight')
    absent = [UPSAMPLER_PREFIX + key for key in required if key not in upsampler]
    if absent:
        raise ValueError(f'not a FeatUp JBU checkpoint: no {", ".join(absent)}')
    return FeatUpWeights(upsampler, norm or None, skipped)


def build_featup_upsampler(
        checkpoint: CheckpointSource,
        trust_checkpoint: bool = False) -> Tuple[JBUStack, Optional[ChannelNorm], FeatUpWeights]:
    """A JBUStack (and the backbone ChannelNorm, if trained with one) with FeatUp's weights.

    Returns:
        (stack, norm or None, the sorted weights with what was skipped).
    """
    weights = split_featup_state_dict(read_state_dict(checkpoint, trust_checkpoint))
    source = f'FeatUp checkpoint {checkpoint}' if not isinstance(checkpoint, Mapping) \
        else 'FeatUp checkpoint'
    stack = JBUStack(**weights.stack_config())
    load_state_dict_strict(stack, weights.upsampler, f'{source} (upsampler.*)')
    norm = None
    if weights.norm is not None:
        norm = ChannelNorm(weights.feat_dim)
        load_state_dict_strict(norm, weights.norm, f'{source} (model.1.*)')
    return stack, norm, weights
