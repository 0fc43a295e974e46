"""The feature upsamplers FeatUp's Table 2 compares with, plus DySample: torch-only modules
built as ``Cls(source_dim, guidance_dim, **options)`` and called as
``up(source, guidance)`` -> the source (B, source_dim, h, w) at the guidance's size."""
from .a2u import A2U
from .carafe import CARAFE
from .dysample import DySample
from .fade import FADE
from .indexnet import IndexNet
from .resize_conv import ResizeConv
from .sapa import SAPA

__all__ = ['A2U', 'CARAFE', 'DySample', 'FADE', 'IndexNet', 'ResizeConv', 'SAPA']
