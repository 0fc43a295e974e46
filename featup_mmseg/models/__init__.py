"""featup_mmseg's modules in mmseg's MODELS registry."""
from . import upsamplers  # noqa: F401  (registers JBUStage)
from .backbones import TimmFeatureBackbone
from .decode_heads import (FeatUpDepthwiseSeparableASPPHead, FeatUpSegformerHead,
                           FeatUpUPerHead)
from .image_guided_output import ImageGuidedOutputUpsampler
from .image_guided_upsampler import ImageGuidedUpsampler
from .necks import FeatUpFPN, FeatureUpsamplingNeck, JBUNeck
from .segmentors import GuidedEncoderDecoder

__all__ = [
    'FeatUpDepthwiseSeparableASPPHead', 'FeatUpFPN', 'FeatUpSegformerHead', 'FeatUpUPerHead',
    'FeatureUpsamplingNeck', 'GuidedEncoderDecoder', 'ImageGuidedOutputUpsampler',
    'ImageGuidedUpsampler', 'JBUNeck', 'TimmFeatureBackbone'
]
