"""Distributed mmengine runs on machines without CUDA (DDP over gloo on CPU)."""
import atexit
import gc

import torch
import torch.distributed as dist
from mmengine.config import Config


def _destroy_process_group() -> None:
    """Destroys the gloo group, joining its work threads, before the interpreter finalizes.

    A gloo work thread releases a finished collective only after waking its caller. If that
    drops the last C++ reference to a tensor Python has seen, the thread takes the GIL; once
    the interpreter is finalizing, Python ends it with pthread_exit, whose unwinding through a
    noexcept destructor aborts the rank ("terminate called without an active exception").
    The group's destructor waits for these threads, but runs only when nothing references the
    group: the DDP model does, and mmengine's runner holds it in reference cycles that only the
    cyclic garbage collector frees - hence the collection here rather than during finalization.
    """
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def prepare_cpu_distributed(cfg: Config) -> None:
    """Makes ``cfg.launcher='pytorch'`` work without CUDA.

    mmengine's pytorch launcher pins each process to CUDA device LOCAL_RANK and DDP to
    that device. Without CUDA this starts the process group itself (gloo, from the
    torchrun environment), which mmengine then finds initialised, and builds DDP without
    device ids. Does nothing with CUDA or without a launcher.
    """
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        # Its collectives take group=group.WORLD as default argument: imported after the
        # group exists, they would keep it (and its threads) alive until finalization.
        import torch.distributed.nn.functional as _  # noqa: F401
        dist.init_process_group(backend='gloo')
        atexit.register(_destroy_process_group)
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None)
