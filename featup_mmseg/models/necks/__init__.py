from .featup_fpn import FeatUpFPN
from .feature_upsampling_neck import FeatureUpsamplingNeck
from .jbu_neck import JBUNeck

__all__ = ['FeatUpFPN', 'FeatureUpsamplingNeck', 'JBUNeck']
