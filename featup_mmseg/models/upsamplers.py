"""The guided-upsampler interface shared by every head and neck of featup_mmseg.

A guided upsampler is built from a config dict with ``guidance_dim`` (the guidance's
channels) and, if its constructor takes it, ``source_dim`` (the source's channels), and is
called as ``upsampler(source, guidance)``, returning ``source`` resampled to the guidance's
spatial size, whatever that size is. Two kinds of config:

- ``dict(type='bilinear')``, ``dict(type='nearest')`` (or another mode of
  ``F.interpolate``: 'bicubic', 'area', 'nearest-exact'): plain interpolation to the
  guidance's size (the guidance's content is not used). These are the baselines: a head
  built with them computes exactly what the mmseg module it replaces computes.
- any other ``type`` registered in mmseg's MODELS with that interface:
  ``dict(type='JBUStage', key_dim=32, radius=3, range_kernel='softmax')`` (FeatUp's JBU)
  and the upsamplers FeatUp compares with (:mod:`featup_mmseg.layers.feature_upsamplers`):
  'ResizeConv', 'CARAFE', 'IndexNet', 'A2U', 'SAPA', 'FADE', 'DySample'.

AnyUp and NAF (:mod:`featup_mmseg.layers.attention_upsamplers`) are registered too but
are not guided upsamplers of this kind: they upsample features of any backbone to any
size in one step, guided by the image (``upsampler(image, features, output_size)``), so
they go where FeatUp's image-guided stack goes (:func:`build_attention_upsampler`):
``FeatureUpsamplingNeck`` and the segmentor's output upsampler.

Interpolation types are not registered in MODELS: mmcv registers 'bilinear' and
'nearest' there as its (single-input) upsample layers, which must keep working.
"""
import inspect
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

from ..layers import JBUStage, attention_upsamplers, feature_upsamplers, jbu_guidance_products

MODELS.register_module(module=JBUStage)
for _name in feature_upsamplers.__all__:
    MODELS.register_module(module=getattr(feature_upsamplers, _name))
ATTENTION_UPSAMPLER_TYPES = tuple(attention_upsamplers.__all__)
for _name in ATTENTION_UPSAMPLER_TYPES:
    MODELS.register_module(module=getattr(attention_upsamplers, _name))

INTERPOLATION_TYPES = ('bilinear', 'nearest', 'bicubic', 'area', 'nearest-exact')
CHOICES = ("dict(type='JBUStage', range_kernel='softmax' | 'no_mlp' | 'gaussian_euclidean' | "
           "'gaussian_cosine'), dict(type='bilinear'), dict(type='nearest'), one of "
           f"{', '.join(repr(name) for name in feature_upsamplers.__all__)}, or a "
           'MODELS-registered guided upsampler')


class InterpolationUpsampler(nn.Module):
    """Resizes ``source`` to the guidance's size by ``F.interpolate`` (mmseg's ``resize``
    without its warning); the guidance's content is not used."""

    def __init__(self, mode: str = 'bilinear', align_corners: bool = False):
        super().__init__()
        self.mode = mode
        # F.interpolate accepts align_corners only for the (bi/tri)linear and bicubic modes
        self.align_corners = align_corners if mode in ('bilinear', 'bicubic') else None

    def extra_repr(self) -> str:
        return f'mode={self.mode!r}, align_corners={self.align_corners}'

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return F.interpolate(source, size=guidance.shape[-2:], mode=self.mode,
                             align_corners=self.align_corners)


def upsampler_type(owner: str, cfg) -> str:
    """The type of a guided-upsampler config, after checking that it can be built."""
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise ValueError(f'{owner}: upsampler must be a dict with a type: {CHOICES}; '
                         f'got {cfg!r}')
    kind = cfg['type']
    if kind in INTERPOLATION_TYPES:
        if len(cfg) > 1:
            raise ValueError(f'{owner}: upsampler=dict(type={kind!r}) takes no other keys, got '
                             f'unexpected keys {sorted(set(cfg) - {"type"})}')
    elif not isinstance(kind, str) or MODELS.get(kind) is None:
        raise ValueError(f'{owner}: unknown upsampler type {kind!r}{_did_you_mean(kind)}; '
                         f'use {CHOICES}')
    elif kind in ATTENTION_UPSAMPLER_TYPES:
        raise ValueError(
            f'{owner}: {kind} upsamples features to any size in one step guided by the image, '
            'not a feature map stage by stage: use it as the upsampler of a '
            "FeatureUpsamplingNeck or as output_upsampler=dict(type='ImageGuidedOutputUpsampler', "
            f"upsampler=dict(type={kind!r}))")
    elif not _takes_guidance_dim(MODELS.get(kind)):
        cls = MODELS.get(kind)
        raise ValueError(
            f'{owner}: upsampler type {kind!r} is {cls.__module__}.{cls.__qualname__}, which '
            'is not a guided upsampler (its constructor takes no guidance_dim; a guided '
            f'upsampler is built with guidance_dim and called as upsampler(source, '
            f'guidance)){_did_you_mean(kind)}; use {CHOICES}')
    return kind


def _takes_guidance_dim(cls) -> bool:
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the build decide
        return True
    return any(p.name == 'guidance_dim' or p.kind is inspect.Parameter.VAR_KEYWORD
               for p in parameters)


def _did_you_mean(kind) -> str:
    """', did you mean 'CARAFE'?' where ``kind`` is one of the guided types in another case
    (mmcv registers 'carafe', its single-input CARAFEPack, in the same registry)."""
    names = ['JBUStage', *feature_upsamplers.__all__]
    match = next((name for name in names
                  if isinstance(kind, str) and name.lower() == kind.lower().replace('_', '')),
                 None)
    return f' (did you mean {match!r}?)' if match is not None and match != kind else ''


def checked_upsampler_config(owner: str, cfg) -> dict:
    """A head's or neck's ``upsampler`` argument as the config it builds from: FeatUp's JBU
    when None, checked by :func:`upsampler_type`."""
    cfg = dict(type='JBUStage') if cfg is None else cfg
    upsampler_type(owner, cfg)
    return dict(cfg)


def is_interpolation(cfg) -> bool:
    return cfg['type'] in INTERPOLATION_TYPES


def is_attention_upsampler(cfg) -> bool:
    """Whether ``cfg`` configures AnyUp or NAF."""
    return isinstance(cfg, dict) and cfg.get('type') in ATTENTION_UPSAMPLER_TYPES


def build_attention_upsampler(owner: str, cfg, in_channels: int) -> nn.Module:
    """Builds AnyUp or NAF from ``cfg`` for features of ``in_channels``, called as
    ``upsampler(image, features, output_size)``."""
    if not is_attention_upsampler(cfg):
        raise ValueError(f'{owner}: upsampler must be dict(type=...) with a type of '
                         f'{ATTENTION_UPSAMPLER_TYPES}, got {cfg!r}')
    upsampler = MODELS.build(dict(cfg))
    upsampler.check_channels(in_channels)
    return upsampler


def build_guided_upsampler(owner: str, cfg, guidance_dim: int, source_dim: int,
                           align_corners: bool = False) -> nn.Module:
    """Builds one guided upsampler; ``align_corners`` applies to 'bilinear' only."""
    kind = upsampler_type(owner, cfg)
    if kind in INTERPOLATION_TYPES:
        return InterpolationUpsampler(kind, align_corners)
    default_args = dict(guidance_dim=guidance_dim)
    if 'source_dim' in inspect.signature(MODELS.get(kind)).parameters:
        default_args['source_dim'] = source_dim
    return MODELS.build(dict(cfg), default_args=default_args)


def build_level_stages(owner: str, cfg, num_levels: int, channels: int,
                       align_corners: bool = False) -> nn.ModuleList:
    """Stages that bring levels 1..N-1 (of ``channels`` each, finest first) to level 0.

    Guided types climb one level at a time: ``stages[i - 1][s]`` upsamples level i's map
    from level i - s to level i - 1 - s, guided by that level's map (FeatUp's SegFormer
    decoder). Interpolation types resize each level straight to level 0 in one step
    (``stages[i - 1]`` has one stage), as mmseg's heads do.
    """
    steps = (lambda level: 1) if is_interpolation(cfg) else (lambda level: level)
    return nn.ModuleList(
        nn.ModuleList(build_guided_upsampler(owner, cfg, channels, channels, align_corners)
                      for _ in range(steps(level))) for level in range(1, num_levels))


def level_stage_guides(stages: nn.ModuleList):
    """(level, [(guiding level, stage), ...]) for each level of :func:`build_level_stages`."""
    for level, level_stages in enumerate(stages, start=1):
        targets = range(level - 1, -1, -1) if len(level_stages) == level else (0, )
        yield level, list(zip(targets, level_stages))


def climb_levels(stages: nn.ModuleList, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Levels 1..N-1 of ``maps`` brought to level 0's grid by :func:`build_level_stages`'
    stages, each step guided by the map of the level it reaches.

    The JBU stages guided by one level project its map together
    (:func:`jbu_guidance_products`) before climbing.
    """
    guides = list(level_stage_guides(stages))
    products = {}
    for target in range(len(maps)):
        guided = [stage for _, steps in guides for guiding, stage in steps
                  if guiding == target and isinstance(stage, JBUStage)]
        if len(guided) > 1:
            products.update(zip(map(id, guided), jbu_guidance_products(guided, maps[target])))
    outs = []
    for level, steps in guides:
        x = maps[level]
        for target, stage in steps:
            x = stage(x, maps[target], products=products[id(stage)]) \
                if id(stage) in products else stage(x, maps[target])
        outs.append(x)
    return outs


def describe_stages(cfg, stage: Optional[nn.Module]) -> str:
    """'radius-3 JBU stages' or '<type> stages', for error messages."""
    radius = getattr(stage, 'radius', None)
    return f'radius-{radius} JBU stages' if radius is not None else f'{cfg["type"]} stages'
