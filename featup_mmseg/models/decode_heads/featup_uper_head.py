"""UPerNet's head with guided upsampling in its top-down path and output climb."""
import torch
import torch.nn as nn
from mmseg.models.decode_heads import UPerHead
from mmseg.registry import MODELS

from ..upsamplers import build_guided_upsampler, build_level_stages, climb_levels
from .guided_decode_head import GuidedDecodeHeadMixin, check_levels, level_guides, size_of


@MODELS.register_module()
class FeatUpUPerHead(GuidedDecodeHeadMixin, UPerHead):
    """mmseg's ``UPerHead`` whose bilinear resizes are guided upsamplers (FADE/SAPA's
    protocol: each x2 step is guided by the finer level's features).

    - Top-down path: level i's lateral (the PPM output for the top level) is upsampled to
      level i - 1 by ``top_down_stages[i - 1]``, guided by level i - 1's lateral, and added
      to it.
    - Output climb: each FPN output climbs to the finest grid one level at a time,
      ``guided_stages[i - 1][s]`` guided by the FPN output of the level it reaches, as in
      :class:`FeatUpSegformerHead` (for four levels: 3 + 2 + 1 stages).

    With ``upsampler=dict(type='bilinear')`` every step is mmseg's bilinear resize (the
    climb in one step per level), so the head computes exactly what ``UPerHead`` computes
    with the same state_dict; the parameter names are UPerHead's, so its checkpoints load
    (guided stages add their own keys).

    Args:
        pool_scales: as UPerHead's.
        upsampler: default ``dict(type='JBUStage')`` (FeatUp's JBU); any config of
            :mod:`featup_mmseg.models.upsamplers`, built with ``guidance_dim=channels``.
        **kwargs: BaseDecodeHead's arguments, as for UPerHead.
    """

    def __init__(self, pool_scales=(1, 2, 3, 6), upsampler=None, **kwargs):
        check_levels(type(self).__name__, kwargs.get('in_channels'), kwargs.get('in_index', -1))
        super().__init__(pool_scales=pool_scales, **kwargs)
        self.set_upsampler(upsampler)
        owner, num_levels = type(self).__name__, len(self.in_channels)
        # top_down_stages[i - 1]: level i (its lateral) to level i - 1
        self.top_down_stages = nn.ModuleList(
            build_guided_upsampler(owner, self.upsampler_cfg, self.channels, self.channels,
                                   self.align_corners) for _ in range(num_levels - 1))
        self.guided_stages = build_level_stages(owner, self.upsampler_cfg, num_levels,
                                                self.channels, self.align_corners)

    def guides(self, inputs):
        sizes = [size_of(x) for x in self._transform_inputs(inputs)]
        guides = level_guides(self.guided_stages, sizes, lambda level: f'input {level}')
        top_down = [(f'input {level}', sizes[level], getattr(stage, 'min_guidance_size', 1))
                    for level, stage in enumerate(self.top_down_stages)]
        return top_down + guides

    def guided_stage(self):
        return self.top_down_stages[0] if len(self.top_down_stages) else None

    def _forward_feature(self, inputs):
        """UPerHead's ``_forward_feature`` with its resizes replaced by the stages."""
        inputs = self._transform_inputs(inputs)
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self.top_down_stages[i - 1](laterals[i],
                                                                            laterals[i - 1])
        fpn_outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]
        fpn_outs.append(laterals[-1])
        fpn_outs = [fpn_outs[0], *climb_levels(self.guided_stages, fpn_outs)]
        return self.fpn_bottleneck(torch.cat(fpn_outs, dim=1))

    def forward(self, inputs):
        self.check_input_size(inputs)
        return super().forward(inputs)
