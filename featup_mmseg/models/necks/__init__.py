from .featup_fpn import FeatUpFPN
from .jbu_neck import JBUNeck

__all__ = ['FeatUpFPN', 'JBUNeck']
