"""Which backbone an upsampler was trained with, and a warning when it meets another.

FeatUp's upsampler learns the features of one backbone's weights. Its pretraining
checkpoint records that backbone (type, config, where its weights came from and a
fingerprint of them); a neck that loads the checkpoint keeps the record, and the segmentor
compares it with its own backbone at its first forward pass, after every load (init_cfg,
``load_from``, a tool's ``--checkpoint``), so a randomly re-initialised or different
backbone is reported instead of silently paired with the upsampler.
"""
import hashlib
import warnings
from typing import Optional

import torch
import torch.nn as nn

# The config keys through which mmseg and timm backbones name their weights.
WEIGHT_KEYS = ('checkpoint', 'checkpoint_path', 'pretrained')


def backbone_fingerprint(backbone: nn.Module) -> str:
    """A SHA-256 of ``backbone``'s state dict (names, dtypes, shapes and values), first 16
    hex digits: equal for equal weights on any device."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f'{name}:{tensor.dtype}:{tuple(tensor.shape)};'.encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b'')
    return digest.hexdigest()[:16]


def backbone_weights_source(backbone_cfg: Optional[dict],
                            load_from: Optional[str] = None) -> Optional[str]:
    """Where a backbone built from ``backbone_cfg`` gets its weights: the run's
    ``load_from`` (the whole model), the backbone's init_cfg checkpoint, or its own
    checkpoint/pretrained argument; None when it is randomly initialised."""
    if load_from:
        return f'load_from={load_from}'
    cfg = backbone_cfg or {}
    init_cfgs = cfg.get('init_cfg') or []
    for init_cfg in init_cfgs if isinstance(init_cfgs, (list, tuple)) else [init_cfgs]:
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained' and \
                init_cfg.get('checkpoint'):
            return f"init_cfg checkpoint={init_cfg['checkpoint']}"
    for key in WEIGHT_KEYS:
        if cfg.get(key):  # a path, or timm's pretrained=True (its hub weights)
            return f'{key}={cfg[key]}'
    return None


def random_backbone_message(owner: str, backbone_cfg: Optional[dict]) -> str:
    """Why a randomly initialised backbone is rarely what the user wants."""
    kind = (backbone_cfg or {}).get('type', 'the backbone')
    return (f'{owner}: the backbone ({kind}) is randomly initialised: its config names no '
            'weights (init_cfg=dict(type="Pretrained", checkpoint=...), checkpoint=... or '
            'pretrained=...) and there is no load_from. Its features, and an upsampler '
            'trained on them, are those of random weights, which a model rebuilt later does '
            'not share unless it loads the same weights: name the backbone weights in the '
            'config')


def backbone_record(backbone: nn.Module, backbone_cfg: Optional[dict],
                    load_from: Optional[str] = None) -> dict:
    """What a pretraining checkpoint records of the backbone its upsampler learned from."""
    return dict(type=type(backbone).__name__, config=repr(dict(backbone_cfg or {})),
                weights=backbone_weights_source(backbone_cfg, load_from),
                fingerprint=backbone_fingerprint(backbone))


def trained_backbone(checkpoint: dict, path: str) -> Optional[dict]:
    """The record of the backbone a pretraining ``checkpoint`` (loaded from ``path``) was
    trained with, with ``path`` under 'checkpoint'; None if it has none (e.g. converted
    FeatUp weights)."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    record = (meta or {}).get('featup_pretrain', {}).get('backbone')
    return dict(record, checkpoint=str(path)) if isinstance(record, dict) else None


def check_backbone_record(backbone: nn.Module, record: dict) -> bool:
    """Warns (UserWarning) if ``backbone`` is not the one ``record`` (of
    :func:`trained_backbone`) describes; returns whether it is."""
    fingerprint = backbone_fingerprint(backbone)
    if fingerprint == record.get('fingerprint'):
        return True
    weights = record.get('weights') or 'a random initialisation'
    warnings.warn(
        f"upsampler checkpoint {record.get('checkpoint')} was trained with another backbone: "
        f"{record.get('type')} with weights from {weights} (fingerprint "
        f"{record.get('fingerprint')}), but this model's {type(backbone).__name__} has "
        f'fingerprint {fingerprint}. Its upsampler expects the features of those weights: '
        "load them (the config's backbone weights, load_from, or a tool's --checkpoint); "
        'ignore this if the backbone was fine-tuned on purpose since',
        UserWarning, stacklevel=3)
    return False
