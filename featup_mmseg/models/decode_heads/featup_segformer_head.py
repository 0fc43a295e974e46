"""SegFormer's all-MLP head with guided upsampling of the coarse levels (spec section 4)."""
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS

BILINEAR = 'bilinear'


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
        upsampler = dict(type='JBUStage') if upsampler is None else dict(upsampler)
        upsampler_type = upsampler.get('type')
        if upsampler_type != BILINEAR and MODELS.get(upsampler_type) is None:
            raise ValueError(
                f'FeatUpSegformerHead: unknown upsampler type {upsampler_type!r}; use '
                "dict(type='JBUStage', range_kernel='softmax' | 'no_mlp' | "
                "'gaussian_euclidean' | 'gaussian_cosine'), dict(type='bilinear'), or a "
                'MODELS-registered guided upsampler')
        self.interpolate_mode = interpolate_mode
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
