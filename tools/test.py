"""Test (and evaluate) a segmentor from an mmseg config (mmseg's tools/test.py command line).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show]
                         [--show-dir DIR] [--wait-time S] [--tta]
                         [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]
"""
import argparse

from mmengine.runner import Runner

import featup_mmseg.plugin  # noqa: F401  (registrations, safe checkpoint loading)
from featup_mmseg.engine import add_run_arguments, load_run_config
from featup_mmseg.file_checks import check_input_file, check_output_dir


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='directory to save the predictions (for offline eval)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory to save painted predictions')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds between shows')
    parser.add_argument('--tta', action='store_true', help='test time augmentation')
    add_run_arguments(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    try:  # before the model is built and the data read
        check_input_file(args.checkpoint, 'checkpoint')
        for option in ('out', 'show_dir'):
            if getattr(args, option):
                check_output_dir(getattr(args, option), '--' + option.replace('_', '-'))
    except OSError as err:
        raise SystemExit(f'test.py: error: {err}') from None
    cfg = load_run_config(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        hook = cfg.default_hooks.get('visualization')
        if hook is None:
            raise ValueError('--show/--show-dir need default_hooks.visualization '
                             "(dict(type='SegVisualizationHook')) in the config")
        hook['draw'] = True
        if args.show:
            hook['show'] = True
            hook['wait_time'] = args.wait_time
        if args.show_dir:
            cfg.visualizer['save_dir'] = args.show_dir
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None:
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    Runner.from_cfg(cfg).test()


if __name__ == '__main__':
    main()
