"""SegFormer's all-MLP head with guided upsampling of the coarse levels (spec section 4)."""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS

from ...layers.argument_checks import check_choice
from ..input_size import level_stride, min_image_side_for_level

BILINEAR = 'bilinear'
INTERPOLATE_MODES = ('nearest', 'bilinear', 'bicubic', 'area', 'nearest-exact')


@MODELS.register_module()
class FeatUpSegformerHead(BaseDecodeHead):
    """SegformerHead whose coarse levels reach the 1/4 grid through guided x2 stages.

    Each level is projected to ``channels`` (c1..cN, finest first) as in SegFormer. With
    ``upsampler=dict(type='bilinear')`` every projection is then resized straight to the
    finest grid, computing exactly what mmseg's ``SegformerHead`` computes with the same
    weights. Any other type builds guided upsampling stages from MODELS
    (``JBUStage`` by default, FeatUp's setting): level i climbs one level at a time,
    each stage guided by the projection of the level it upsamples to, e.g. for four
    levels c4 -> (c3) -> (c2) -> (c1), c3 -> (c2) -> (c1), c2 -> (c1): six stages. The
    upsampled maps are concatenated, fused by the 1x1 fusion conv and classified.

    A JBU stage needs its guiding level larger than its radius, so inputs too small for
    that are refused before any computation, naming the smallest input image size that
    works (in ``loss`` and ``predict``, which know the image size) or the level size.

    Args:
        interpolate_mode: resize mode of the bilinear baseline.
        upsampler: default ``dict(type='JBUStage')``; ``dict(type='JBUStage', key_dim=32, radius=3,
            range_kernel='softmax' | 'no_mlp' | 'gaussian_euclidean' | 'gaussian_cosine')``,
            ``dict(type='bilinear')``, or another MODELS type built with ``guidance_dim``
            and called as ``(source, guidance)``.
        **kwargs: BaseDecodeHead's arguments, as for SegformerHead.
    """

    def __init__(self, interpolate_mode='bilinear', upsampler=None, **kwargs):
        in_channels, in_index = kwargs.get('in_channels'), kwargs.get('in_index')
        if not isinstance(in_channels, (list, tuple)) or not isinstance(in_index, (list, tuple)) \
                or len(in_channels) != len(in_index):
            raise ValueError(
                f'FeatUpSegformerHead: in_channels {in_channels} and in_index {in_index} must be '
                'lists of equal length, one channel count per selected backbone level')
        super().__init__(input_transform='multiple_select', **kwargs)
        num_inputs = len(self.in_channels)
        upsampler = dict(type='JBUStage') if upsampler is None else upsampler
        choices = ("dict(type='JBUStage', range_kernel='softmax' | 'no_mlp' | "
                   "'gaussian_euclidean' | 'gaussian_cosine'), dict(type='bilinear'), or a "
                   'MODELS-registered guided upsampler')
        if not isinstance(upsampler, dict) or 'type' not in upsampler:
            raise ValueError(f'FeatUpSegformerHead: upsampler must be a dict with a type: '
                             f'{choices}; got {upsampler!r}')
        upsampler = dict(upsampler)
        upsampler_type = upsampler['type']
        if upsampler_type == BILINEAR and len(upsampler) > 1:
            raise ValueError("FeatUpSegformerHead: upsampler=dict(type='bilinear') takes no "
                             f'other keys, got unexpected keys {sorted(set(upsampler) - {"type"})}')
        if upsampler_type != BILINEAR and MODELS.get(upsampler_type) is None:
            raise ValueError(
                f'FeatUpSegformerHead: unknown upsampler type {upsampler_type!r}; use {choices}')
        self.interpolate_mode = check_choice('FeatUpSegformerHead', 'interpolate_mode',
                                             interpolate_mode, INTERPOLATE_MODES)
        self.upsampler_type = upsampler_type

        self.convs = nn.ModuleList(
            ConvModule(in_channels=channels, out_channels=self.channels, kernel_size=1,
                       stride=1, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
            for channels in self.in_channels)
        self.fusion_conv = ConvModule(in_channels=self.channels * num_inputs,
                                      out_channels=self.channels, kernel_size=1,
                                      norm_cfg=self.norm_cfg)
        if upsampler_type != BILINEAR:
            # guided_stages[i - 1][s]: stage s of level i, upsampling to level i - 1 - s
            self.guided_stages = nn.ModuleList(
                nn.ModuleList(
                    MODELS.build(upsampler, default_args=dict(guidance_dim=self.channels))
                    for _ in range(level)) for level in range(1, num_inputs))

    def min_guide_sizes(self) -> Dict[int, int]:
        """{level: the smallest height and width its guided stages need} of each level that
        guides a stage (all but the coarsest), from the stages' ``min_guidance_size``."""
        needed = {}
        for level, stages in enumerate(self.guided_stages, start=1):
            for target, stage in zip(range(level - 1, -1, -1), stages):
                needed[target] = max(needed.get(target, 1),
                                     getattr(stage, 'min_guidance_size', 1))
        return needed

    def check_input_size(self, inputs, image_size: Optional[Sequence[int]] = None) -> None:
        """Refuses inputs on which a guided stage would get a guide no larger than its
        radius: with ``image_size`` (the input images' (H, W)) the error names the smallest
        image size that works, else the level that is too small.
        """
        if self.upsampler_type == BILINEAR:
            return
        sizes = [tuple(int(n) for n in x.shape[-2:]) for x in self._transform_inputs(inputs)]
        needed = self.min_guide_sizes()
        small = [level for level, side in needed.items() if min(sizes[level]) < side]
        if not small:
            return
        radius = getattr(self.guided_stages[0][0], 'radius', None)
        stages = f'radius-{radius} JBU stages' if radius is not None else \
            f'{self.upsampler_type} stages'
        if image_size is None:
            level = small[0]
            raise ValueError(
                f'FeatUpSegformerHead with {stages} needs each guiding level at least '
                f'{needed[level]} x {needed[level]}, got {sizes[level]} at input {level} '
                f'(in_index {self.in_index[level]}): the input images are too small; resize '
                'or pad them')
        height, width = (int(n) for n in image_size[:2])
        minimum = max(
            min_image_side_for_level(level_stride((height, width), sizes[guide]), side)
            for guide, side in needed.items())
        raise ValueError(
            f'FeatUpSegformerHead with {stages} needs input images of at least {minimum} x '
            f'{minimum} px, got {height} x {width}; resize or pad the inputs, or with slide '
            f'inference use a crop_size of at least {minimum} x {minimum}')

    def loss(self, inputs, batch_data_samples, train_cfg) -> dict:
        self.check_input_size(inputs, batch_data_samples[0].metainfo.get('img_shape'))
        return super().loss(inputs, batch_data_samples, train_cfg)

    def predict(self, inputs, batch_img_metas: List[dict], test_cfg):
        self.check_input_size(inputs, batch_img_metas[0].get('img_shape'))
        return super().predict(inputs, batch_img_metas, test_cfg)

    def project(self, inputs):
        """c1..cN: the selected backbone levels projected to ``channels``."""
        return [conv(x) for conv, x in zip(self.convs, self._transform_inputs(inputs))]

    def upsample_levels(self, projected):
        """c2..cN brought to c1's grid by their guided stages (not for 'bilinear')."""
        outs = []
        for level, stages in enumerate(self.guided_stages, start=1):
            x = projected[level]
            for target, stage in zip(range(level - 1, -1, -1), stages):
                x = stage(x, projected[target])
            outs.append(x)
        return outs

    def forward(self, inputs):
        self.check_input_size(inputs)
        projected = self.project(inputs)
        if self.upsampler_type == BILINEAR:
            outs = [
                resize(input=x, size=projected[0].shape[2:], mode=self.interpolate_mode,
                       align_corners=self.align_corners) for x in projected
            ]
        else:
            outs = [projected[0], *self.upsample_levels(projected)]
        out = self.fusion_conv(torch.cat(outs, dim=1))
        return self.cls_seg(out)
