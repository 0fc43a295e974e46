"""Upsamples one backbone level by interpolation, by a stack of any guided upsampler or by
an attention upsampler (AnyUp, NAF), guided by the input image: what linear probes of
upsampled features compare FeatUp's JBU stack (:class:`JBUNeck`) with."""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor

from ...layers import stage_sizes
from ...layers.argument_checks import check_int
from ..image_guidance import backbone_level, check_built_by_guided_segmentor
from ..image_guided_upsampler import Freezable, StrictPretrained
from ..upsamplers import (build_attention_upsampler, build_guided_upsampler,
                          is_attention_upsampler, is_interpolation, upsampler_type)

IMAGE_CHANNELS = 3


@MODELS.register_module()
class FeatureUpsamplingNeck(Freezable, StrictPretrained, BaseModule):
    """Upsamples one backbone level to ``ceil(image size / out_stride)``; the other levels
    pass through unchanged, so the decode head keeps its ``in_index``.

    - ``upsampler=dict(type='bilinear')`` (or another interpolation type of
      :mod:`featup_mmseg.models.upsamplers`): one resize straight to the output size.
    - any guided upsampler (``dict(type='ResizeConv')``, ``'CARAFE'``, ``'SAPA'``, ...):
      ``num_stages`` stages of it, each built with ``guidance_dim=3`` and guided by the
      image average-pooled to the stage's output size (how FeatUp applies its baselines
      and its JBU stack), the stages following :func:`~featup_mmseg.layers.stage_sizes`
      (x2 each for a power-of-two ratio: 14 -> 28 -> 56 -> 112 -> 224). Fixed-factor
      upsamplers (CARAFE, SAPA, ...) need such x2 steps and say so otherwise.
    - ``upsampler=dict(type='AnyUp')`` or ``dict(type='NAF')``: one step of that attention
      upsampler to the output size, guided by the image itself (keys ``upsampler.*``, as
      ``tools/convert_attention_upsampler_checkpoint.py`` writes the published weights).

    FeatUp's JBU stack is :class:`JBUNeck`. Needs :class:`GuidedEncoderDecoder`, which
    passes the image.

    Args:
        in_channels: channels of the upsampled level.
        in_index: which backbone output to upsample.
        upsampler: the upsampler config (see above).
        num_stages: stages of a guided upsampler (interpolation, AnyUp and NAF take one).
        out_stride: output stride relative to the image (1: the image's size).
        align_corners: for 'bilinear' interpolation.
        frozen: keep the neck in eval mode without gradients (a pretrained upsampler under
            a linear probe).
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=...)`` loads
            strictly (:class:`~featup_mmseg.models.image_guided_upsampler.StrictPretrained`).

    Raises:
        ValueError: for an unknown upsampler type or a bad argument, when built.
    """
    requires_image = True

    def __init__(self,
                 in_channels: int,
                 in_index: int = -1,
                 upsampler: dict = dict(type='bilinear'),
                 num_stages: int = 4,
                 out_stride: int = 1,
                 align_corners: bool = False,
                 frozen: bool = False,
                 init_cfg=None):
        name = type(self).__name__
        check_built_by_guided_segmentor(name)
        super().__init__(init_cfg)
        if isinstance(in_index, bool) or not isinstance(in_index, int):
            raise ValueError(f'{name}: in_index must be the index (int) of a backbone output, '
                             f'got {in_index!r}')
        if not isinstance(frozen, bool):
            raise ValueError(f'{name}: frozen must be a bool, got {frozen!r}')
        self.in_channels = check_int(name, 'in_channels', in_channels)
        self.in_index = in_index
        self.out_stride = check_int(name, 'out_stride', out_stride)
        if is_attention_upsampler(upsampler):
            self.upsampler = build_attention_upsampler(name, upsampler, in_channels)
        else:
            upsampler_type(name, upsampler)
            count = 1 if is_interpolation(upsampler) else check_int(name, 'num_stages',
                                                                     num_stages)
            self.upsampler = nn.ModuleList(
                build_guided_upsampler(name, upsampler, IMAGE_CHANNELS, in_channels,
                                       align_corners) for _ in range(count))
        if frozen:
            self.freeze()

    def forward(self, inputs: Sequence[Tensor], image: Tensor) -> Tuple[Tensor, ...]:
        outputs = list(inputs)
        outputs[self.in_index] = self.upsample(self.select(outputs), image)
        return tuple(outputs)

    def select(self, inputs: Sequence[Tensor]) -> Tensor:
        """The backbone level this neck upsamples."""
        return backbone_level(type(self).__name__, inputs, self.in_index, self.in_channels)

    def upsample(self, features: Tensor, image: Tensor,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 output_size: Optional[Tuple[int, int]] = None) -> Tensor:
        """``features`` at ``ceil(image size / out_stride)`` (or ``output_size``), guided by
        ``image``, in a tensor of ``memory_format``."""
        if output_size is None:
            output_size = tuple(math.ceil(int(side) / self.out_stride)
                                for side in image.shape[-2:])
        if not isinstance(self.upsampler, nn.ModuleList):  # AnyUp, NAF
            return self.upsampler(image, features, output_size).contiguous(
                memory_format=memory_format)
        sizes = stage_sizes(tuple(features.shape[-2:]), output_size, len(self.upsampler))
        for stage, size in zip(self.upsampler, sizes):
            features = stage(features, F.adaptive_avg_pool2d(image, size))
        return features.contiguous(memory_format=memory_format)
