"""Importing this module registers featup_mmseg's models, datasets and hooks with mmseg and
mmengine, the ONNX translations of its ops with torch.onnx's TorchScript exporter (for the
``featup_mmseg::`` ops only, so ``torch.onnx.export(model, ..., dynamo=False)`` exports its
models as they are), and applies the mmengine checkpoint-loading fix where torch needs it
(where ``torch.load`` defaults to ``weights_only=True`` and so refuses mmengine's own
checkpoints, see :mod:`featup_mmseg.engine.checkpoint_globals`).

It also names the package to mmengine's config loader, so that configs inherit ours the
way they inherit mmseg's (``_base_ = ['featup_mmseg::featup_upernet/...py']``, from a
regular, not editable, install, whose configs ship in featup_mmseg/.mim) and
``mmengine.hub.get_config('featup_mmseg::...')`` finds them through the model index.

Configs import it with ``custom_imports = dict(imports=['featup_mmseg.plugin'],
allow_failed_imports=False)``; the tools in tools/ import it themselves.
"""
from mmengine.config.utils import MODULE2PACKAGE

from . import datasets, engine, models  # noqa: F401  (registrations)
from .engine import allow_mmengine_checkpoint_globals
from .ops.onnx_export import register_onnx_translations

allow_mmengine_checkpoint_globals()
register_onnx_translations()
MODULE2PACKAGE.setdefault('featup_mmseg', 'featup_mmseg')
