"""mmseg's FPN neck with guided upsampling in its top-down path."""
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.necks import FPN
from mmseg.registry import MODELS

from ..input_size import check_guide_sizes
from ..upsamplers import build_guided_upsampler, checked_upsampler_config, describe_stages

FPN_UPSAMPLE_CFG = dict(mode='nearest')


@MODELS.register_module()
class FeatUpFPN(FPN):
    """mmseg's ``FPN`` whose top-down steps are guided upsamplers: lateral i is
    upsampled to level i - 1 by ``top_down_stages[i - 1]``, guided by lateral i - 1 (the
    finer level's features, FADE/SAPA's protocol), and added to it.

    mmseg's FPN upsamples with ``upsample_cfg=dict(mode='nearest')``:
    ``upsampler=dict(type='nearest')`` computes exactly that, and
    ``upsampler=dict(type='bilinear')`` exactly ``FPN(upsample_cfg=dict(mode='bilinear'))``,
    with the same state_dict, whose parameter names FeatUpFPN keeps.

    Args:
        upsampler: default ``dict(type='JBUStage')``; any config of
            :mod:`featup_mmseg.models.upsamplers`, built with ``guidance_dim=out_channels``.
        upsample_cfg: kept for FPN's signature; only its default is accepted (the
            upsampler replaces it).
        args, kwargs: FPN's arguments.
    """

    def __init__(self, *args, upsampler=None, upsample_cfg=FPN_UPSAMPLE_CFG, **kwargs):
        if dict(upsample_cfg) != FPN_UPSAMPLE_CFG:
            raise ValueError(
                f'FeatUpFPN: upsample_cfg={upsample_cfg!r} is replaced by upsampler: use '
                "upsampler=dict(type='nearest') or dict(type='bilinear') for mmseg's resizes")
        super().__init__(*args, upsample_cfg=upsample_cfg, **kwargs)
        self.upsampler_cfg = checked_upsampler_config('FeatUpFPN', upsampler)
        self.upsampler_type = self.upsampler_cfg['type']
        self.top_down_stages = nn.ModuleList(
            build_guided_upsampler('FeatUpFPN', self.upsampler_cfg, self.out_channels,
                                   self.out_channels)
            for _ in range(len(self.lateral_convs) - 1))

    def forward(self, inputs):
        """FPN's forward with its top-down resizes replaced by the stages."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'FeatUpFPN: expected {len(self.in_channels)} inputs (one per '
                             f'in_channels entry), got {len(inputs)}')
        laterals = [conv(inputs[i + self.start_level])
                    for i, conv in enumerate(self.lateral_convs)]
        check_guide_sizes(
            'FeatUpFPN', describe_stages(self.upsampler_cfg, next(iter(self.top_down_stages),
                                                                  None)),
            [(f'lateral {i}', tuple(laterals[i].shape[-2:]),
              getattr(stage, 'min_guidance_size', 1))
             for i, stage in enumerate(self.top_down_stages)])
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self.top_down_stages[i - 1](laterals[i],
                                                                            laterals[i - 1])
        return self.outputs(inputs, laterals)

    def outputs(self, inputs, laterals):
        """FPN's outputs from the top-down laterals: the 3 x 3 convs, then the extra
        levels (max pooling or strided convs) as FPN adds them."""
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        if self.num_outs > len(outs):
            if not self.add_extra_convs:
                for _ in range(self.num_outs - len(laterals)):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                if self.add_extra_convs == 'on_input':
                    extra_source = inputs[self.backbone_end_level - 1]
                elif self.add_extra_convs == 'on_lateral':
                    extra_source = laterals[-1]
                else:  # 'on_output'
                    extra_source = outs[-1]
                outs.append(self.fpn_convs[len(laterals)](extra_source))
                for i in range(len(laterals) + 1, self.num_outs):
                    extra = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](extra))
        return tuple(outs)
