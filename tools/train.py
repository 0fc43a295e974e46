"""Train a segmentor from an mmseg config (mmseg's tools/train.py command line).

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp]
                          [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

Importing featup_mmseg.plugin registers its models, datasets and hooks, and lets mmengine's
own checkpoints load where torch.load defaults to weights_only=True (torch >= 2.6), so
--resume works without turning weights_only off.
Distributed runs without CUDA use DDP on CPU (gloo), e.g.
``torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch``.
"""
import argparse
import logging

from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

import featup_mmseg.plugin  # noqa: F401  (registrations)
from featup_mmseg.engine import add_run_arguments, load_run_config


def parse_args():
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--resume', action='store_true',
                        help='resume from the latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic mixed precision training')
    add_run_arguments(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_run_config(args)
    if args.amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper == 'AmpOptimWrapper':
            print_log('AMP training is already enabled in the config.', logger='current',
                      level=logging.WARNING)
        elif wrapper != 'OptimWrapper':
            raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, got {wrapper}')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.resume = args.resume
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()


if __name__ == '__main__':
    main()
