"""Pretrain the JBU upsampler of a config's model with FeatUp's multi-view objective only.

Runs the loop of the config's FeatUpPretrainHook (or a default one, FeatUp's paper
settings) on the training data, without the supervised training that would follow, and
writes the upsampler weights to WORK_DIR/featup_pretrained_upsampler.pth. A JBUNeck loads
them with init_cfg=dict(type='Pretrained', checkpoint=..., prefix='neck.').

    python tools/pretrain_upsampler.py CONFIG [--work-dir DIR] [--cfg-options k=v ...]
    torchrun --nproc_per_node N tools/pretrain_upsampler.py CONFIG --launcher pytorch
"""
import argparse

from mmengine.runner import Runner

import featup_mmseg  # noqa: F401  (registrations)
from featup_mmseg.engine import FeatUpPretrainHook, add_run_arguments, load_run_config


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config file path')
    add_run_arguments(parser)
    cfg = load_run_config(parser.parse_args())
    runner = Runner.from_cfg(cfg)
    hook = next((h for h in runner.hooks if isinstance(h, FeatUpPretrainHook)), None)
    if hook is None:
        hook = FeatUpPretrainHook()
        runner.logger.info('no FeatUpPretrainHook in the config: using the paper settings')
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    model.init_weights()  # as training would: pretrained backbone weights, if configured
    hook.pretrain(runner)


if __name__ == '__main__':
    main()
