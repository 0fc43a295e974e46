"""Distributed mmengine runs on machines without CUDA (DDP over gloo on CPU)."""
import atexit

import torch
import torch.distributed as dist
from mmengine.config import Config


def _destroy_process_group() -> None:
    # An undestroyed gloo group can abort the process at interpreter exit.
    if dist.is_initialized():
        dist.destroy_process_group()


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
        dist.init_process_group(backend='gloo')
        atexit.register(_destroy_process_group)
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None)
