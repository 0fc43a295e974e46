"""Benchmark every guided upsampler at x2, SegFormer-B1 training steps built with each, and
the image-guided upsamplers of any backbone (FeatUp's JBU stack, AnyUp, NAF) at x2 to x16.

Methods: bilinear (the interpolation baseline), JBUStage (FeatUp), ResizeConv, CARAFE,
IndexNet, A2U, SAPA, FADE and DySample, each with the options of its SegFormer-B1 config
in configs/featup_segformer (segformer_mit-b1_<name>_8xb2-160k_ade20k-512x512.py).

Part 'upsamplers': one upsampler built by build_guided_upsampler with 256 guidance and
source channels brings a (2, 256, 64, 64) source to its (2, 256, 128, 128) guidance:
forward time (no grad), forward+backward time (gradients of source, guidance and
parameters) and the peak extra memory of forward+backward above the inputs.

Part 'segformer': one training step of each SegFormer-B1 config at 512 x 512, batch 2, on
random images and labels (150 classes), in train mode: model.train_step with the config's
optimizer wrapper, i.e. data preprocessor, forward in loss mode, backward, AdamW step and
zero_grad; its time and its peak extra memory above the model and its optimizer state.

Part 'image-guided': bilinear, FeatUp's JBU stack (log2(ratio) stages), AnyUp and NAF
(their published configurations, random weights) bring (1, 384, 28, 28) features to
28 * ratio, guided by a 448 x 448 image, for ratios 2, 8 and 16 (NAF's efficiency table):
forward time (no grad), forward+backward time (gradients of the features and parameters),
peak extra memory of forward+backward and parameters; ratios to FeatUp's JBU stack.

Times are medians over repeats after a warm-up run, every method's runs interleaved in
each repeat so that drifting machine load affects all alike. CPU memory is the rise of the
peak resident set (VmHWM) in a fresh process per measurement, after a warm-up on a tiny
input; CUDA memory is torch.cuda.max_memory_allocated. Ratios are to bilinear (and, for
the upsamplers, to JBU), measured in the same run.

    python tools/benchmark_upsamplers.py                   # CPU, and CUDA when available
    python tools/benchmark_upsamplers.py --device cpu --quick
"""
import argparse
import collections
import multiprocessing
import os
import platform
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import featup_mmseg.plugin  # noqa: F401  (registrations)
from benchmark_ops import peak_extra_mib, run_in_fresh_process, time_ms
from featup_mmseg.layers import JBUStack
from featup_mmseg.layers.attention_upsamplers import NAF, AnyUp
from featup_mmseg.models.upsamplers import build_guided_upsampler

ROOT = Path(__file__).resolve().parents[1]
# method -> the <name> of its SegFormer-B1 config
METHODS = {
    'bilinear': 'bilinear',
    'JBUStage': 'featup-jbu',
    'ResizeConv': 'resize-conv',
    'CARAFE': 'carafe',
    'IndexNet': 'indexnet',
    'A2U': 'a2u',
    'SAPA': 'sapa',
    'FADE': 'fade',
    'DySample': 'dysample',
}
CHANNELS = 256  # SegFormer-B1's decoder channels, which its upsamplers work at
NUM_CLASSES = 150  # ADE20K
# Batch and size (upsampler source side, or SegFormer image side), default and --quick.
SIZES = {'upsamplers': {'default': (2, 64), 'quick': (1, 32)},
         'segformer': {'default': (2, 512), 'quick': (1, 256)}}
# part 'image-guided': methods, feature channels, default feature and image sides, ratios
IMAGE_GUIDED_METHODS = ('bilinear', 'FeatUp JBU', 'AnyUp', 'NAF')
IMAGE_GUIDED_CHANNELS = 384
IMAGE_GUIDED_SIDES = (28, 448)
IMAGE_GUIDED_RATIOS = {'default': (2, 8, 16), 'quick': (2, 8)}


def load_config(method):
    """A method's SegFormer-B1 config, ready to build without downloads or padding."""
    cfg = Config.fromfile(str(ROOT / 'configs' / 'featup_segformer' /
                              f'segformer_mit-b1_{METHODS[method]}_8xb2-160k_ade20k-512x512.py'))
    cfg.model.backbone.init_cfg = None  # random weights: nothing to download
    # The batch is made at its size, so nothing needs padding; a divisor instead of the
    # config's fixed 512 x 512 lets the tiny warm-up batch stay tiny.
    cfg.model.data_preprocessor.update(size=None, size_divisor=32)
    return cfg


def build_upsampler(cfg, device):
    """workloads(batch, size) -> {'fwd': ..., 'fwd+bwd': ...} of a config's upsampler."""
    module = build_guided_upsampler('benchmark', cfg.model.decode_head.upsampler.to_dict(),
                                    CHANNELS, CHANNELS).to(device)

    def workloads(batch, size):
        gen = torch.Generator().manual_seed(0)
        source, guidance, grad_out = (
            torch.randn(batch, CHANNELS, side, side, generator=gen).to(device)
            for side in (size, 2 * size, 2 * size))
        source.requires_grad_()
        guidance.requires_grad_()

        def forward():
            with torch.no_grad():
                module(source, guidance)

        return {'fwd': forward,
                'fwd+bwd': lambda: module(source, guidance).backward(grad_out)}

    return workloads


def build_segformer(cfg, device):
    """workloads(batch, size) -> {'step': ...}: one training step of a SegFormer-B1 config."""
    init_default_scope('mmseg')
    # SyncBN needs a process group: a plain BatchNorm computes the same on one process.
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).to(device).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)

    def workloads(batch, size):
        gen = torch.Generator().manual_seed(0)
        data = dict(
            inputs=[torch.randint(256, (3, size, size), generator=gen, dtype=torch.uint8)
                    for _ in range(batch)],
            data_samples=[SegDataSample(gt_sem_seg=PixelData(
                data=torch.randint(NUM_CLASSES, (1, size, size), generator=gen)))
                for _ in range(batch)])
        return {'step': lambda: model.train_step(data, optim_wrapper)}

    return workloads


def image_guided_upsampler(method, side, ratio, device):
    """(upsample(image, features), parameter count) of an image-guided method: 'bilinear',
    'FeatUp JBU', 'AnyUp' or 'NAF', from ``side`` x ``side`` features by ``ratio``."""
    channels = IMAGE_GUIDED_CHANNELS
    size = (side * ratio, side * ratio)
    if method == 'bilinear':
        return (lambda image, features: F.interpolate(features, size, mode='bilinear',
                                                      align_corners=False)), 0
    if method == 'FeatUp JBU':
        module = JBUStack(channels, num_stages=ratio.bit_length() - 1).to(device)

        def upsample(image, features):
            return module(features, image, output_size=size)
    else:
        module = (AnyUp if method == 'AnyUp' else NAF)().to(device)

        def upsample(image, features):
            return module(image, features, size)
    return upsample, sum(p.numel() for p in module.parameters())


def build_image_guided(cfg, device):
    """workloads(batch, ratio) -> {'fwd': ..., 'fwd+bwd': ...} of an image-guided method;
    ``cfg``: (method, feature side, image side)."""
    method, side, image_side = cfg
    channels = IMAGE_GUIDED_CHANNELS

    def workloads(batch, ratio):
        upsample, _ = image_guided_upsampler(method, side, ratio, device)
        gen = torch.Generator().manual_seed(0)
        image = torch.randn(batch, 3, image_side, image_side, generator=gen).to(device)
        features = torch.randn(batch, channels, side, side, generator=gen).to(device)
        features.requires_grad_()
        grad_out = torch.randn(batch, channels, side * ratio, side * ratio,
                               generator=gen).to(device)

        def forward():
            with torch.no_grad():
                upsample(image, features)

        return {'fwd': forward,
                'fwd+bwd': lambda: upsample(image, features).backward(grad_out)}

    return workloads


# part -> (builder, the workload whose memory is measured, the tiny warm-up's size)
PARTS = {
    'upsamplers': (build_upsampler, 'fwd+bwd', 8),
    'segformer': (build_segformer, 'step', 64),
    'image-guided': (build_image_guided, 'fwd+bwd', 2),
}


def quiet_mmengine():
    # The optimizer wrapper's constructor logs every parameter's options at INFO level to
    # mmengine's current logger: a new current logger at WARNING level keeps them out.
    MMLogger.get_instance('benchmark_upsamplers', log_level='WARNING')


def measure_peak(part, cfg, device, batch, size):
    """Peak extra MiB of one config's first full-size run, after every workload ran once
    on a tiny batch, which leaves no sizeable memory cached in the heap but initialises
    thread pools, lazy state and the optimizer's state."""
    quiet_mmengine()
    build, memory_workload, tiny = PARTS[part]
    workloads = build(cfg, device)
    for fn in workloads(1, tiny).values():
        fn()
    return peak_extra_mib(device, workloads(batch, size)[memory_workload])


def median_times(part, configs, device, batch, size, repeats):
    """{(method, workload): median ms}, every method's workloads run once per repeat."""
    cases = {method: PARTS[part][0](cfg, device)(batch, size) for method, cfg in configs.items()}
    for workloads in cases.values():  # warm-up
        for fn in workloads.values():
            fn()
    samples = collections.defaultdict(list)
    for _ in range(repeats):
        for method, workloads in cases.items():
            for name, fn in workloads.items():
                samples[method, name].append(time_ms(device, fn))
    return {key: statistics.median(values) for key, values in samples.items()}


def cpu_model():
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    return platform.processor() or 'unknown CPU'


def machine(device):
    name = torch.cuda.get_device_name() if device == 'cuda' else \
        f'{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads'
    return f'{device}: {name}; torch {torch.__version__}, float32'


def print_table(results, references):
    """A markdown table of {method: {measure: value}}, with each measure's ratio to the
    references' (methods) after the values; '-' where the reference's value is 0 (a tiny
    run's peak that stays under the process's earlier high-water mark)."""
    measures = list(next(iter(results.values())))
    columns = ['method'] + measures + [f'{measure.split()[0]} / {reference}'
                                       for reference in references for measure in measures]

    def ratio(value, reference):
        return f'{value / reference:.2f}x' if reference else '-'

    body = [[method] + [f'{values[measure]:.1f}' for measure in measures] +
            [ratio(values[measure], results[reference][measure])
             for reference in references for measure in measures]
            for method, values in results.items()]
    widths = [max(len(cells[i]) for cells in [columns] + body) for i in range(len(columns))]
    for cells in [columns, ['-' * width for width in widths]] + body:
        print('| ' + ' | '.join(cell.rjust(width) if i else cell.ljust(width)
                                for i, (cell, width) in enumerate(zip(cells, widths))) + ' |',
              flush=True)


def run_part(part, configs, device, batch, size, repeats):
    methods = list(configs)
    if part == 'upsamplers':
        print(f'\nupsamplers at x2: source ({batch}, {CHANNELS}, {size}, {size}) -> '
              f'({batch}, {CHANNELS}, {2 * size}, {2 * size}), guidance {CHANNELS} channels; '
              f'fwd: no grad; peak: forward+backward above the inputs; medians of {repeats}')
        references = ['bilinear', 'JBUStage']
    elif part == 'image-guided':
        _, side, image_side = next(iter(configs.values()))
        channels = IMAGE_GUIDED_CHANNELS
        print(f'\nimage-guided upsamplers at x{size}: features ({batch}, {channels}, {side}, '
              f'{side}) -> ({batch}, {channels}, {side * size}, {side * size}), image '
              f'{image_side} x {image_side}; fwd: no grad; peak: forward+backward above the '
              f'inputs; medians of {repeats}')
        references = ['FeatUp JBU']
    else:
        print(f'\nSegFormer-B1 training step at {size} x {size}, batch {batch}, '
              f'{NUM_CLASSES} classes: model.train_step (preprocessing, forward in loss mode, '
              f'backward, AdamW step); peak: above the model and its optimizer state; '
              f'medians of {repeats}')
        references = ['bilinear']
    peaks = {}
    for method, cfg in configs.items():
        if device == 'cpu':
            # forked from a server that has imported the libraries (see main)
            peaks[method] = run_in_fresh_process(measure_peak, part, cfg, device, batch, size,
                                                 start_method='forkserver')
        else:
            peaks[method] = measure_peak(part, cfg, device, batch, size)
    times = median_times(part, configs, device, batch, size, repeats)
    results = {method: {f'{name} ms': ms for (timed, name), ms in times.items()
                        if timed == method} for method in methods}
    for method in methods:
        results[method]['peak MiB'] = peaks[method]
        if part == 'image-guided':
            results[method]['params (K)'] = image_guided_upsampler(
                method, configs[method][1], size, 'cpu')[1] / 1e3
    print_table(results, [method for method in references if method in methods])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=['cpu', 'cuda', 'all'], default='all')
    parser.add_argument('--parts', default=','.join(PARTS),
                        help=f'comma-separated parts out of {",".join(PARTS)} (default: all)')
    parser.add_argument('--methods', default=','.join(METHODS),
                        help=f'comma-separated methods out of {",".join(METHODS)} '
                        "(default: all; part 'image-guided' always runs its four)")
    parser.add_argument('--quick', action='store_true',
                        help='batch 1, 32 -> 64 upsampling, 256 x 256 SegFormer steps, '
                        'image-guided x2 and x8 only, 2 repeats on CPU')
    parser.add_argument('--batch', type=int, default=None, help='batch size of both parts')
    parser.add_argument('--source-size', type=int, default=None,
                        help='side of the upsamplers\' source (the guidance has twice it)')
    parser.add_argument('--image-size', type=int, default=None,
                        help='side of the SegFormer images (a multiple of 32, at least 64)')
    parser.add_argument('--feature-size', type=int, default=IMAGE_GUIDED_SIDES[0],
                        help="side of part 'image-guided's features (default: %(default)s)")
    parser.add_argument('--guidance-size', type=int, default=IMAGE_GUIDED_SIDES[1],
                        help="side of part 'image-guided's image (default: %(default)s)")
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed repeats (default on CPU: 5 for the upsamplers, 3 for '
                        'SegFormer, 2 with --quick; on CUDA: 20)')
    args = parser.parse_args()

    parts = [p for p in args.parts.split(',') if p]
    methods = [m for m in args.methods.split(',') if m]
    for kind, chosen, known in (('parts', parts, PARTS), ('methods', methods, METHODS)):
        unknown = set(chosen) - set(known)
        if unknown or not chosen:
            parser.error(f'choose {kind} from {list(known)}; got {chosen}')
    # MiT's last stage (1/32) needs more than one value per channel for batch norm.
    if args.image_size is not None and (args.image_size < 64 or args.image_size % 32):
        parser.error(f'--image-size must be a multiple of 32 from 64 on; got {args.image_size}')
    devices = ['cpu', 'cuda'] if args.device == 'all' else [args.device]
    if 'cuda' in devices and not torch.cuda.is_available():
        if args.device == 'cuda':
            parser.error('no CUDA device is available')
        devices.remove('cuda')

    quiet_mmengine()
    # The forkserver imports torch, mmengine and mmseg once; each fresh process forked
    # from it then starts in a fraction of a second instead of seconds. (Not '__main__':
    # the forkserver of Python 3.12 and older never preloads it, CPython gh-126631.)
    multiprocessing.set_forkserver_preload(['featup_mmseg.plugin'])
    configs = {method: load_config(method) for method in methods}
    size_option = {'upsamplers': args.source_size, 'segformer': args.image_size}
    for device in devices:
        print(f'\n== {machine(device)} ==')
        for part in parts:
            repeats = args.repeats or (20 if device == 'cuda' else 2 if args.quick else
                                       3 if part == 'segformer' else 5)
            if part == 'image-guided':
                for ratio in IMAGE_GUIDED_RATIOS['quick' if args.quick else 'default']:
                    cases = {method: (method, args.feature_size, args.guidance_size)
                             for method in IMAGE_GUIDED_METHODS}
                    run_part(part, cases, device, args.batch or 1, ratio, repeats)
                continue
            batch, size = SIZES[part]['quick' if args.quick else 'default']
            run_part(part, configs, device, args.batch or batch, size_option[part] or size,
                     repeats)


if __name__ == '__main__':
    main()
