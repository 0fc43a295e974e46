"""Pretrain the JBU upsampler of a config's model with FeatUp's multi-view objective only.

Runs the loop of the config's FeatUpPretrainHook (or a default one, FeatUp's paper
settings) on the training data, without the supervised training that would follow, and
writes the upsampler weights to WORK_DIR/featup_pretrained_upsampler.pth. A JBUNeck loads
them with init_cfg=dict(type='Pretrained', checkpoint=..., prefix='neck.').

The model starts as training would start it: weights initialised (pretrained backbone
weights through init_cfg), then the config's ``load_from`` checkpoint loaded; a
``load_from`` that cannot be loaded stops the tool with an error.

    python tools/pretrain_upsampler.py CONFIG [--work-dir DIR] [--cfg-options k=v ...]
    torchrun --nproc_per_node N tools/pretrain_upsampler.py CONFIG --launcher pytorch
"""
import argparse
import pickle
from pathlib import Path
from typing import Tuple

from mmengine.config import Config
from mmengine.runner import Runner

import featup_mmseg.plugin  # noqa: F401  (registrations)
from featup_mmseg.engine import FeatUpPretrainHook, add_run_arguments, load_run_config
from featup_mmseg.file_checks import check_output_file
from featup_mmseg.layers.featup_checkpoint import describe_load_error

# torch >= 2.6 loads mmengine's checkpoints with weights_only=True unless told otherwise
TRUST_HINT = 'run with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 to load it without weights_only'


def prepare(cfg: Config) -> Tuple[Runner, FeatUpPretrainHook]:
    """The runner of ``cfg`` with its model initialised and ``load_from`` loaded, as
    training would have it before its first step, and the pretraining hook to run.

    Raises:
        SystemExit: if ``load_from`` cannot be loaded (missing or not a checkpoint).
    """
    runner = Runner.from_cfg(cfg)
    hook = next((h for h in runner.hooks if isinstance(h, FeatUpPretrainHook)), None)
    if hook is None:
        hook = FeatUpPretrainHook()
        runner.logger.info('no FeatUpPretrainHook in the config: using the paper settings')
    try:  # before anything is computed (the hook checks it again when it starts)
        check_output_file(Path(runner.work_dir) / hook.checkpoint_name, '--work-dir')
    except OSError as err:
        raise SystemExit(f'pretrain_upsampler.py: error: {err}') from None
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    model.init_weights()  # as training would: pretrained backbone weights, if configured
    load_from = cfg.get('load_from')
    if load_from:
        try:
            runner.load_checkpoint(load_from)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise SystemExit(f'pretrain_upsampler.py: error: cannot load load_from='
                             f'{load_from!r}: {describe_load_error(load_from, err, TRUST_HINT)}'
                             ) from err
    return runner, hook


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config file path')
    add_run_arguments(parser)
    runner, hook = prepare(load_run_config(parser.parse_args()))
    hook.pretrain(runner)


if __name__ == '__main__':
    main()
