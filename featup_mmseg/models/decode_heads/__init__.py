from .featup_segformer_head import FeatUpSegformerHead
from .featup_sep_aspp_head import FeatUpDepthwiseSeparableASPPHead
from .featup_uper_head import FeatUpUPerHead

__all__ = ['FeatUpDepthwiseSeparableASPPHead', 'FeatUpSegformerHead', 'FeatUpUPerHead']
