"""Loading FeatUp's published JBU checkpoints, strictly.

FeatUp publishes PyTorch Lightning checkpoints whose ``state_dict`` holds ``upsampler.*``
(the JBU stack), the frozen backbone under ``model.`` and the training-only
``downsampler.*`` and ``scale_net.*``. FeatUp's code builds the model in two layouts:

- trained with ``use_norm=True`` (FeatUp's default): ``Sequential(backbone, ChannelNorm)``,
  so the backbone is ``model.0.*`` and the channel LayerNorm applied to its output is
  ``model.1.norm.*``;
- without the norm (the ``no_norm`` checkpoints, the only ones published for MaskCLIP):
  the backbone itself, ``model.*``.

Only the upsampler and the norm are needed to upsample; the backbone and the
training-only tensors are reported as skipped, and any other key is an error.
"""
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .channel_norm import ChannelNorm
from .jbu_stack import JBUStack

UPSAMPLER_PREFIX = 'upsampler.'
MODEL_PREFIX = 'model.'
NORM_PREFIX = 'model.1.'
NORM_KEY_PREFIX = NORM_PREFIX + 'norm.'
NORMED_BACKBONE_PREFIX = 'model.0.'
BACKBONE = 'backbone'
TRAINING_ONLY_PREFIXES = {
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


def check_state_dict_layout(state_dict: Mapping, shapes: Mapping[str, Tuple[int, ...]],
                            header: str, notes: Sequence[str] = (),
                            limit: Optional[int] = None) -> None:
    """Refuses ``state_dict`` unless its keys are those of ``shapes`` with tensors of those
    shapes: a ValueError of ``header``, the ``notes`` and every missing, unexpected and
    mis-shaped key (at most ``limit`` of each kind, the rest counted)."""
    missing = sorted(set(shapes) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(shapes))
    misshaped = []
    for key in sorted(set(shapes) & set(state_dict)):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            misshaped.append(f'{key}: a {type(value).__name__}, expected a tensor '
                             f'{shapes[key]}')
        elif tuple(value.shape) != tuple(shapes[key]):
            misshaped.append(f'{key}: {tuple(value.shape)}, expected {shapes[key]}')
    if not (missing or unexpected or misshaped):
        return
    report = [header, *notes]
    for title, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                        ('mis-shaped keys', misshaped)):
        if keys:
            shown = keys if limit is None or len(keys) <= limit else \
                keys[:limit] + [f'... {len(keys) - limit} more']
            report.append(f'{len(keys)} {title}:\n  ' + '\n  '.join(shown))
    raise ValueError('\n'.join(report))


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
            with warnings.catch_warnings():
                # torch 2.1's weights_only loader warns about its own use of TypedStorage
                warnings.filterwarnings('ignore', message='TypedStorage is deprecated')
                loaded = torch.load(checkpoint, map_location='cpu',
                                    weights_only=not trust_checkpoint)
        except (pickle.UnpicklingError, EOFError) as err:
            if trust_checkpoint:
                raise
            raise ValueError(describe_load_error(
                checkpoint, err, 'pass trust_checkpoint=True (--trust-checkpoint on the '
                'command line)')) from err
    state_dict = loaded.get('state_dict', loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state_dict, Mapping) or \
            not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError('checkpoint: expected a state_dict of tensors (or a dict holding one '
                         "under 'state_dict')")
    return dict(state_dict)


def describe_load_error(path, err: BaseException, how_to_trust: str) -> str:
    """What a failed ``torch.load(path, weights_only=True)`` means, in one line: an empty or
    truncated file, a file refused as unsafe (a pickle of Python objects besides tensors,
    which the weights-only unpickler does not run; ``how_to_trust`` says how to load it
    anyway), or a file that is not a PyTorch checkpoint; else the error itself."""
    message = str(err)
    if isinstance(err, EOFError):
        size = Path(path).stat().st_size if Path(path).is_file() else None
        return (f'{path} is empty (0 bytes), not a PyTorch checkpoint' if size == 0 else
                f'{path} ends too early ({size} bytes): a truncated or incomplete file')
    if not isinstance(err, pickle.UnpicklingError):
        message = message or type(err).__name__
        return message if str(path) in message else f'{path}: {message}'
    # torch names a refused object as 'GLOBAL module.name' ('Unsupported global: GLOBAL
    # x.Y was not an allowed global', 'unsupported GLOBAL posix.system whose module posix
    # is blocked'); before torch 2.4 as 'Unsupported class x.Y'.
    refused = re.search(r'(?:GLOBAL|Unsupported class:?)\s+([\w.]+)', message)
    if refused is not None:
        return (f'{path} was refused as unsafe: it pickles Python objects besides tensors '
                f'({refused.group(1)}), which loading with weights_only=True does not run. '
                f'If you trust its source, {how_to_trust}')
    # the unpickler's reason follows 'WeightsUnpickler error:', on its line or the next
    reason = message.split('WeightsUnpickler error:', 1)[-1]
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    cause = lines[0] if lines else type(err).__name__
    return f'{path} is not a readable PyTorch checkpoint ({cause})'


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


def has_channel_norm(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the checkpoint's model is FeatUp's ``Sequential(backbone, ChannelNorm)``:
    it has ``model.1.norm.*`` keys and every other ``model.*`` key is under ``model.0.``
    (a backbone stored directly under ``model.`` with a ``1.norm`` of its own has others).
    """
    model_keys = [key for key in state_dict if key.startswith(MODEL_PREFIX)]
    norm_keys = {key for key in model_keys if key.startswith(NORM_KEY_PREFIX)}
    return bool(norm_keys) and all(
        key.startswith(NORMED_BACKBONE_PREFIX) for key in model_keys if key not in norm_keys)


def _check_use_norm(use_norm, found: bool) -> bool:
    """Whether to load the channel norm: ``use_norm``, or ``found`` for 'auto'."""
    if use_norm != 'auto' and not isinstance(use_norm, bool):
        raise ValueError(f"use_norm must be 'auto', True or False, got {use_norm!r}")
    if use_norm == 'auto':
        return found
    if use_norm and not found:
        raise ValueError(
            'use_norm=True, but the checkpoint has no channel norm (model.1.norm.* next to a '
            "backbone under model.0.): it was trained without it; pass use_norm=False or 'auto'")
    if not use_norm and found:
        raise ValueError(
            "use_norm=False, but the checkpoint was trained with FeatUp's channel norm "
            '(model.1.norm.*), so its upsampler expects normalised features; pass '
            "use_norm=True or 'auto'")
    return use_norm


def split_featup_state_dict(state_dict: Mapping[str, torch.Tensor],
                            use_norm: Union[str, bool] = 'auto') -> FeatUpWeights:
    """Sorts a FeatUp state_dict into upsampler, norm and skipped parts.

    Args:
        state_dict: a FeatUp checkpoint's state_dict, in either layout of the module
            docstring.
        use_norm: whether the checkpoint must have the channel norm (True), must not
            (False), or 'auto': it is used where present (:func:`has_channel_norm`).

    Raises:
        ValueError: for keys FeatUp checkpoints do not have, without upsampler weights,
            or when ``use_norm`` contradicts the checkpoint.
    """
    with_norm = _check_use_norm(use_norm, has_channel_norm(state_dict))
    upsampler, norm, skipped, unknown = {}, {}, {}, []
    for key, value in state_dict.items():
        if key.startswith(UPSAMPLER_PREFIX):
            upsampler[key[len(UPSAMPLER_PREFIX):]] = value
        elif with_norm and key.startswith(NORM_PREFIX):
            norm[key[len(NORM_PREFIX):]] = value
        elif key.startswith(MODEL_PREFIX):
            skipped[BACKBONE] = skipped.get(BACKBONE, 0) + 1
        else:
            prefix = next((p for p in TRAINING_ONLY_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                unknown.append(key)
            else:
                what = TRAINING_ONLY_PREFIXES[prefix]
                skipped[what] = skipped.get(what, 0) + 1
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
        trust_checkpoint: bool = False,
        use_norm: Union[str, bool] = 'auto'
) -> Tuple[JBUStack, Optional[ChannelNorm], FeatUpWeights]:
    """A JBUStack (and the backbone ChannelNorm, if trained with one) with FeatUp's weights.

    Args:
        checkpoint: a FeatUp checkpoint file (or its loaded dict), either layout.
        trust_checkpoint: see :func:`read_state_dict`.
        use_norm: see :func:`split_featup_state_dict`.

    Returns:
        (stack, norm or None, the sorted weights with what was skipped).
    """
    weights = split_featup_state_dict(read_state_dict(checkpoint, trust_checkpoint), use_norm)
    source = f'FeatUp checkpoint {checkpoint}' if not isinstance(checkpoint, Mapping) \
        else 'FeatUp checkpoint'
    stack = JBUStack(**weights.stack_config())
    load_state_dict_strict(stack, weights.upsampler, f'{source} (upsampler.*)')
    norm = None
    if weights.norm is not None:
        norm = ChannelNorm(weights.feat_dim)
        load_state_dict_strict(norm, weights.norm, f'{source} (model.1.*)')
    return stack, norm, weights
