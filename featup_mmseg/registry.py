"""featup_mmseg's registry scope: children of mmseg's registries, for configs built in the
``featup_mmseg`` scope.

mmengine builds what a config inherits from another package (``_base_ =
['featup_mmseg::featup_upernet/...py']``) in that package's scope, and imports
``<scope>.registry`` to find its registries. featup_mmseg registers its modules in mmseg's
registries, so each registry here is an empty child of mmseg's: a lookup in the
``featup_mmseg`` scope falls through to mmseg's, which holds featup_mmseg's modules too
(``featup_mmseg.plugin``, imported when a registry here is first used).
"""
from mmengine.registry import Registry
from mmseg import registry as mmseg_registry

__all__ = list(mmseg_registry.__all__)


def _child(name: str) -> Registry:
    parent = getattr(mmseg_registry, name)
    return Registry(parent.name, parent=parent, scope='featup_mmseg',
                    locations=['featup_mmseg.plugin'])


for _name in __all__:
    globals()[_name] = _child(_name)
