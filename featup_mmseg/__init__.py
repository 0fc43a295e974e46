"""featup_mmseg: FeatUp's joint bilateral upsampler for mmsegmentation 1.x."""
from .version import __version__

__all__ = ['__version__']
