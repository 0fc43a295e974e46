"""Attention-based, encoder-agnostic feature upsamplers (AnyUp, NAF) on featup_mmseg's
cross-scale neighbourhood-attention ops, called as ``upsampler(image, features,
output_size)``, with the converters of their published weights."""
from .anyup import AnyUp, convert_published_anyup
from .naf import NAF, convert_published_naf

__all__ = ['AnyUp', 'NAF']
