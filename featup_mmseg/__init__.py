"""featup_mmseg: FeatUp's joint bilateral upsampler for mmsegmentation 1.x.

Importing ``featup_mmseg``, ``featup_mmseg.ops`` or ``featup_mmseg.layers`` needs only
torch and changes nothing elsewhere. ``featup_mmseg.plugin`` registers the models,
datasets and hooks with mmseg and mmengine (configs: ``custom_imports =
dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)``).
"""
import torch

from .version import __version__, check_torch_version

check_torch_version(torch.__version__)

__all__ = ['__version__']
