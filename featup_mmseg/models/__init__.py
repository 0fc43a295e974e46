"""featup_mmseg's modules in mmseg's MODELS registry."""
from . import upsamplers  # noqa: F401  (registers JBUStage)
from .decode_heads import (FeatUpDepthwiseSeparableASPPHead, FeatUpSegformerHead,
                           FeatUpUPerHead)
from .image_guided_output import ImageGuidedOutputUpsampler
from .image_guided_upsampler import ImageGuidedUpsampler
from .necks import FeatUpFPN, JBUNeck
from .segmentors import GuidedEncoderDecoder

__all__ = [
    'FeatUpDepthwiseSeparableASPPHead', 'FeatUpFPN', 'FeatUpSegformerHead', 'FeatUpUPerHead',
    'GuidedEncoderDecoder', 'ImageGuidedOutputUpsampler', 'ImageGuidedUpsampler', 'JBUNeck'
]
