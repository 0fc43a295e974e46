"""Let mmengine load its own checkpoints under torch >= 2.6, keeping weights_only=True.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that means
``weights_only=True``, and the unpickler then refuses what mmengine itself saves: numpy
arrays and scalars in ``meta`` and the ``HistoryBuffer`` logs of the message hub (whose
statistics methods are pickled through ``getattr``). So ``--resume`` fails.

Instead of turning weights_only off, mmengine's loaders for local files and http(s) are
re-registered to allow exactly those globals while they load; every other ``torch.load``
in the process keeps the default allowlist.
"""
import functools

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader, load_from_http, load_from_local

_MULTIARRAY = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray


def mmengine_checkpoint_globals() -> list:
    """The non-tensor globals found in mmengine's training checkpoints."""
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes)
                     if name.endswith('DType')]
    return [
        HistoryBuffer, getattr, np.ndarray, np.dtype, _MULTIARRAY._reconstruct,
        _MULTIARRAY.scalar, *dtype_classes
    ]


def _with_mmengine_globals(loader):

    @functools.wraps(loader)
    def load(*args, **kwargs):
        with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
            return loader(*args, **kwargs)

    return load


def allow_mmengine_checkpoint_globals() -> None:
    """Re-registers mmengine's local and http(s) checkpoint loaders (idempotent)."""
    for prefixes, loader in (('', load_from_local), (('http://', 'https://'), load_from_http)):
        CheckpointLoader.register_scheme(prefixes, _with_mmengine_globals(loader), force=True)
