"""SegFormer's all-MLP head with guided upsampling of the coarse levels (FeatUp, section 4.4)."""
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS

from ...layers.argument_checks import check_choice
from ..upsamplers import INTERPOLATION_TYPES, build_level_stages, climb_levels
from .guided_decode_head import GuidedDecodeHeadMixin, check_levels, level_guides, size_of

BILINEAR = 'bilinear'


@MODELS.register_module()
class FeatUpSegformerHead(GuidedDecodeHeadMixin, BaseDecodeHead):
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
        check_levels('FeatUpSegformerHead', kwargs.get('in_channels'), kwargs.get('in_index'))
        super().__init__(input_transform='multiple_select', **kwargs)
        self.set_upsampler(upsampler)
        self.interpolate_mode = check_choice('FeatUpSegformerHead', 'interpolate_mode',
                                             interpolate_mode, INTERPOLATION_TYPES)
        num_inputs = len(self.in_channels)
        self.convs = nn.ModuleList(
            ConvModule(in_channels=channels, out_channels=self.channels, kernel_size=1,
                       stride=1, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
            for channels in self.in_channels)
        self.fusion_conv = ConvModule(in_channels=self.channels * num_inputs,
                                      out_channels=self.channels, kernel_size=1,
                                      norm_cfg=self.norm_cfg)
        # SegformerHead's own interpolate_mode is the mode of its bilinear baseline
        stages_cfg = dict(type=interpolate_mode) if self.upsampler_type == BILINEAR \
            else self.upsampler_cfg
        # guided_stages[i - 1][s]: stage s of level i, upsampling to level i - 1 - s
        self.guided_stages = build_level_stages('FeatUpSegformerHead', stages_cfg, num_inputs,
                                                self.channels, self.align_corners)

    def guides(self, inputs):
        sizes = [size_of(x) for x in self._transform_inputs(inputs)]
        return level_guides(self.guided_stages, sizes,
                            lambda level: f'input {level} (in_index {self.in_index[level]})')

    def guided_stage(self):
        return self.guided_stages[0][0]

    def project(self, inputs):
        """c1..cN: the selected backbone levels projected to ``channels``."""
        return [conv(x) for conv, x in zip(self.convs, self._transform_inputs(inputs))]

    def upsample_levels(self, projected):
        """c2..cN brought to c1's grid by their stages (FeatUpPretrainHook trains these)."""
        return climb_levels(self.guided_stages, projected)

    def forward(self, inputs):
        self.check_input_size(inputs)
        projected = self.project(inputs)
        outs = [projected[0], *self.upsample_levels(projected)]
        out = self.fusion_conv(torch.cat(outs, dim=1))
        return self.cls_seg(out)
