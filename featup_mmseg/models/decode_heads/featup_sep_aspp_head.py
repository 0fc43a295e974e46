"""DeepLabV3+'s head with a guided upsampler for its 1/8 -> 1/4 step."""
import torch
from mmseg.models.decode_heads import DepthwiseSeparableASPPHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS

from ..upsamplers import build_guided_upsampler
from .guided_decode_head import GuidedDecodeHeadMixin, size_of


@MODELS.register_module()
class FeatUpDepthwiseSeparableASPPHead(GuidedDecodeHeadMixin, DepthwiseSeparableASPPHead):
    """mmseg's ``DepthwiseSeparableASPPHead`` (DeepLabV3+) whose upsampling of the ASPP
    output to the low-level grid is a guided upsampler (``c1_upsampler``) guided by the
    low-level branch (``c1_bottleneck(inputs[0])``, ``c1_channels`` channels).

    With ``upsampler=dict(type='bilinear')`` it computes exactly what
    DepthwiseSeparableASPPHead computes with the same state_dict, whose parameter names it
    keeps. The image-pool branch's broadcast of a 1 x 1 map stays a bilinear resize.

    Args:
        c1_in_channels, c1_channels: as DepthwiseSeparableASPPHead's; the guided step
            needs the low-level branch (c1_in_channels > 0).
        upsampler: default ``dict(type='JBUStage')``; any config of
            :mod:`featup_mmseg.models.upsamplers`, built with ``guidance_dim=c1_channels``
            and ``source_dim=channels``.
        **kwargs: ASPPHead's arguments.
    """

    def __init__(self, c1_in_channels, c1_channels, upsampler=None, **kwargs):
        super().__init__(c1_in_channels=c1_in_channels, c1_channels=c1_channels, **kwargs)
        self.set_upsampler(upsampler)
        if self.c1_bottleneck is None:
            if self.guided:
                raise ValueError(
                    f'FeatUpDepthwiseSeparableASPPHead: a {self.upsampler_type} upsampler is '
                    'guided by the low-level branch, which c1_in_channels=0 removes; set '
                    'c1_in_channels to the channels of backbone output 0')
        else:
            self.c1_upsampler = build_guided_upsampler(type(self).__name__,
                                                       self.upsampler_cfg, c1_channels,
                                                       self.channels, self.align_corners)

    def guides(self, inputs):
        return [('backbone output 0 (the low-level branch)', size_of(inputs[0]),
                 getattr(self.c1_upsampler, 'min_guidance_size', 1))]

    def guided_stage(self):
        return self.c1_upsampler

    def forward(self, inputs):
        """DepthwiseSeparableASPPHead's forward with its 1/8 -> 1/4 resize guided."""
        self.check_input_size(inputs)
        x = self._transform_inputs(inputs)
        aspp_outs = [
            resize(self.image_pool(x), size=x.size()[2:], mode='bilinear',
                   align_corners=self.align_corners), *self.aspp_modules(x)
        ]
        output = self.bottleneck(torch.cat(aspp_outs, dim=1))
        if self.c1_bottleneck is not None:
            c1_output = self.c1_bottleneck(inputs[0])
            output = torch.cat([self.c1_upsampler(output, c1_output), c1_output], dim=1)
        output = self.sep_bottleneck(output)
        return self.cls_seg(output)
