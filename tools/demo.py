"""The featup_mmseg demo: bilinear vs FeatUp JBU SegFormer heads on synthetic data.

Makes the embedded synthetic dataset (ADE20K layout, data/synthetic_shapes), trains a
SegFormer (MiT-B0) with the bilinear baseline head and with FeatUp's JBU head on the
CPU, evaluates both, and writes a PNG comparing image, ground truth and the two
predictions. Takes a few minutes on 2 cores.

    python tools/demo.py [--work-dir work_dirs/demo] [--iters 300]
"""
import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.runner import Runner

import featup_mmseg.plugin  # noqa: F401  (registrations)
from featup_mmseg.datasets import generate_synthetic_shapes
from featup_mmseg.file_checks import check_output_dir, check_output_file, write_image
from featup_mmseg.datasets.synthetic_shapes import CLASSES, PALETTE

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    'bilinear': ROOT / 'configs/demo/segformer_mit-b0_bilinear_synthetic-128x128.py',
    'FeatUp JBU': ROOT / 'configs/demo/segformer_mit-b0_featup-jbu_synthetic-128x128.py',
}
BAR = CLASSES.index('bar')
FIGURE = 'featup_demo.png'


def train_and_evaluate(name, config, work_dir, data_root, iters):
    cfg = Config.fromfile(config)
    cfg.work_dir = str(work_dir)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = str(data_root)
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = iters
    warmup, poly = cfg.param_scheduler  # keep the warm-up within a tenth of the run
    warmup.end = poly.begin = max(1, min(warmup.end, iters // 10))
    poly.end = iters
    cfg.default_hooks.checkpoint.interval = iters
    cfg.experiment_name = name.replace(' ', '_')
    runner = Runner.from_cfg(cfg)
    start = time.perf_counter()
    runner.train()
    seconds = time.perf_counter() - start
    metrics = runner.test()
    return runner, metrics, seconds


def predictions(runner, indices):
    """(image BGR, ground truth, prediction) for dataset items at ``indices``."""
    model = runner.model.eval()
    dataset = runner.test_dataloader.dataset
    with torch.no_grad():
        samples = model.test_step(pseudo_collate([dataset[i] for i in indices]))
    rows = []
    for index, sample in zip(indices, samples):
        image = cv2.imread(dataset.get_data_info(index)['img_path'])
        rows.append((image, sample.gt_sem_seg.data[0].numpy(),
                     sample.pred_sem_seg.data[0].numpy()))
    return rows


def colourise(label):
    palette = np.array(PALETTE + [[0, 0, 0]], np.uint8)[:, ::-1]  # BGR; 255 -> black
    return palette[np.where(label == 255, len(PALETTE), label)]


def compose_figure(rows_by_model, path, scale=3):
    names = list(rows_by_model)
    columns = ['image', 'ground truth'] + names
    tiles = []
    for row in zip(*rows_by_model.values()):
        image, truth = row[0][0], row[0][1]
        tiles.append([image, colourise(truth)] + [colourise(pred) for _, _, pred in row])
    grid = np.concatenate([np.concatenate(r, axis=1) for r in tiles], axis=0)
    grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    tile_width = grid.shape[1] // len(columns)
    header = np.full((32, grid.shape[1], 3), 255, np.uint8)
    for i, title in enumerate(columns):
        cv2.putText(header, title, (i * tile_width + 8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                    (0, 0, 0), 2)
    write_image(path, np.concatenate([header, grid], axis=0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', type=Path, default=ROOT / 'work_dirs' / 'demo')
    parser.add_argument('--data-root', type=Path, default=ROOT / 'data' / 'synthetic_shapes')
    parser.add_argument('--iters', type=int, default=300, help='training iterations per model')
    args = parser.parse_args()
    try:
        check_output_file(args.work_dir / FIGURE, '--work-dir', image=True)
        check_output_dir(args.data_root, '--data-root')
    except OSError as err:
        parser.error(str(err))

    data_root = generate_synthetic_shapes(args.data_root)
    print(f'synthetic dataset in {data_root}', flush=True)
    results, runners = {}, {}
    for name, config in CONFIGS.items():
        print(f'\n=== training SegFormer (MiT-B0) with the {name} head ===', flush=True)
        work_dir = args.work_dir / name.lower().replace(' ', '_')
        runner, metrics, seconds = train_and_evaluate(name, config, work_dir, data_root,
                                                      args.iters)
        results[name] = (metrics, seconds)
        runners[name] = runner
    # the validation images with the most thin-bar pixels show the difference best
    dataset = runners["bilinear"].test_dataloader.dataset
    bar_pixels = [(cv2.imread(dataset.get_data_info(i)['seg_map_path'], 0) == BAR + 1).sum()
                  for i in range(len(dataset))]
    indices = [int(i) for i in np.argsort(bar_pixels)[::-1][:4]]
    figure = args.work_dir / FIGURE
    compose_figure({name: predictions(runner, indices) for name, runner in runners.items()},
                   figure)

    print(f'\n{"head":<12}{"mIoU":>8}{"mAcc":>8}{"aAcc":>8}{"train s":>10}')
    for name, (metrics, seconds) in results.items():
        print(f'{name:<12}{metrics["mIoU"]:>8.2f}{metrics["mAcc"]:>8.2f}{metrics["aAcc"]:>8.2f}'
              f'{seconds:>10.0f}')
    print(f'\nper-class IoU is in each run\'s log under {args.work_dir}')
    print(f'figure (image | ground truth | bilinear | FeatUp JBU): {figure}')


if __name__ == '__main__':
    main()
