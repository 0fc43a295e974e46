"""featup_mmseg's modules in mmseg's MODELS registry."""
from . import upsamplers  # noqa: F401  (registers JBUStage)
from .decode_heads import FeatUpSegformerHead
from .necks import JBUNeck
from .segmentors import GuidedEncoderDecoder

__all__ = ['FeatUpSegformerHead', 'GuidedEncoderDecoder', 'JBUNeck']
