"""Let mmengine load its own checkpoints where ``torch.load`` defaults to weights_only=True.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that means
``weights_only=True``, and the unpickler then refuses what mmengine itself saves: numpy
arrays and scalars in ``meta`` and the message hub's ``HistoryBuffer`` logs, whose state
holds their statistics methods (``HistoryBuffer.mean`` etc.), which pickle's protocol 2
stores as ``getattr(HistoryBuffer, 'mean')``. So ``--resume`` fails.

Instead of turning weights_only off, mmengine's loaders for local files and http(s) are
re-registered to allow exactly those globals while they load. ``builtins.getattr`` is not
among them: that name resolves to :func:`history_buffer_statistic`, which returns only
HistoryBuffer's statistics methods and refuses every other attribute, so a crafted file
reaches nothing else through it. Every other ``torch.load`` in the process keeps the
default allowlist. Where torch loads mmengine's checkpoints as they are (before torch 2.6),
nothing is changed.
"""
import functools
import io
import pickle
import warnings
from typing import Callable, Optional

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader, load_from_http, load_from_local

try:  # numpy >= 1.26 (numpy 2 pickles arrays through numpy._core)
    from numpy._core import multiarray as _MULTIARRAY
except ImportError:
    from numpy.core import multiarray as _MULTIARRAY
# The statistics methods a HistoryBuffer pickles (HistoryBuffer._set_default_statistics).
HISTORY_BUFFER_STATISTICS = {
    name: getattr(HistoryBuffer, name) for name in ('min', 'max', 'current', 'mean')
}


def history_buffer_statistic(owner, name: str) -> Callable:
    """``getattr(owner, name)`` as mmengine's checkpoints use it, and only so: a statistics
    method of HistoryBuffer.

    Raises:
        pickle.UnpicklingError: for any other object or attribute.
    """
    if owner is HistoryBuffer and name in HISTORY_BUFFER_STATISTICS:
        return HISTORY_BUFFER_STATISTICS[name]
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed in an mmengine checkpoint: only '
        f'HistoryBuffer.{"/".join(HISTORY_BUFFER_STATISTICS)} are')


def mmengine_checkpoint_globals() -> list:
    """The non-tensor globals of mmengine's training checkpoints, for
    ``torch.serialization.safe_globals``; getattr by name only, as
    :func:`history_buffer_statistic`."""
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25 pickles dtypes by class
    dtype_classes = [getattr(dtypes, name) for name in dir(dtypes)
                     if name.endswith('DType')] if dtypes is not None else []
    return [(history_buffer_statistic, 'builtins.getattr'), HistoryBuffer, np.ndarray, np.dtype,
            _MULTIARRAY._reconstruct, _MULTIARRAY.scalar, *dtype_classes]


def torch_refuses_mmengine_checkpoints() -> bool:
    """Whether ``torch.load``, called as mmengine calls it (no ``weights_only``), refuses
    what mmengine's checkpoints hold: a HistoryBuffer, saved and loaded in memory."""
    saved = io.BytesIO()
    torch.save({'message_hub': HistoryBuffer([1.0], [1])}, saved)
    saved.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch's notes on its weights_only default
        try:
            torch.load(saved)
        except pickle.UnpicklingError:
            return True
    return False


def _with_mmengine_globals(loader):

    @functools.wraps(loader)
    def load(*args, **kwargs):
        with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
            return loader(*args, **kwargs)

    return load


def allow_mmengine_checkpoint_globals(needed: Optional[bool] = None) -> bool:
    """Re-registers mmengine's local and http(s) checkpoint loaders to allow
    :func:`mmengine_checkpoint_globals` while they load, if ``needed``: by default where
    :func:`torch_refuses_mmengine_checkpoints`. Idempotent.

    Returns:
        Whether the loaders were re-registered.
    """
    if needed is None:
        needed = torch_refuses_mmengine_checkpoints()
    if not needed:
        return False
    for prefixes, loader in (('', load_from_local), (('http://', 'https://'), load_from_http)):
        CheckpointLoader.register_scheme(prefixes, _with_mmengine_globals(loader), force=True)
    return True
