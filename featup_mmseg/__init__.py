"""featup_mmseg: FeatUp's joint bilateral upsampler for mmsegmentation 1.x.

``featup_mmseg.ops`` and ``featup_mmseg.layers`` need only torch. Where mmseg is
installed, importing ``featup_mmseg`` also registers its models, datasets, hooks and
checkpoint support with mmseg and mmengine (configs: ``custom_imports =
dict(imports=['featup_mmseg'], allow_failed_imports=False)``).
"""
from .version import __version__

try:
    import mmseg  # noqa: F401
except ModuleNotFoundError as err:
    if err.name not in ('mmseg', 'mmcv', 'mmengine'):
        raise
else:
    from . import datasets, engine, models  # noqa: F401

__all__ = ['__version__']
