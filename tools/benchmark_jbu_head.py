"""Training cost of FeatUp's JBU in SegFormer-B1, against bilinear and the pre-issue-13 stage.

In one run, interleaving the implementations repeat by repeat (medians over repeats):

- model: a SegFormer-B1 training step (model.loss forward + backward) at 512 x 512,
  batch 2, with the bilinear head and with the JBU head;
- head: the decode head alone (its loss forward + backward) on fixed backbone features;
- stack: FeatUp's JBUStack (C = 384, 14 -> 224, batch 1) forward + backward.

Each case runs the JBU stage as it is now ('jbu') and as it was before issue 13
('jbu-before': F.conv2d for its 1x1 convolutions, a concatenation for the fixup MLP,
PyTorch's bicubic resize, every intermediate stored for the backward, and the stack's
fixup as nn.Dropout2d + nn.Conv2d + residual sum), so one run gives both the ratio to
bilinear and the speed-up. The stack's backward starts from a fixed random gradient of
its output, so no loss is timed with it.

Every measurement runs in a fresh process (CPU): the peak memory is the rise of the
process's peak resident set (VmHWM) during the first step above the built model and
inputs, as in tools/benchmark_ops.py; the time is the median of the following steps.

    python tools/benchmark_jbu_head.py                  # CPU, the issue's sizes
    python tools/benchmark_jbu_head.py --quick          # small sizes, in-process smoke test
"""
import argparse
import contextlib
import statistics
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from benchmark_ops import peak_extra_mib, run_in_fresh_process

from featup_mmseg.layers import JBUStack, jbu_stack, jbu_stage
from featup_mmseg.ops import adaptive_conv

ROOT = Path(__file__).resolve().parents[1]
CONFIG = 'configs/featup_segformer/segformer_mit-b1_{}_8xb2-160k_ade20k-512x512.py'
IMPLS = {'model': ('bilinear', 'jbu-before', 'jbu'), 'head': ('bilinear', 'jbu-before', 'jbu'),
         'stack': ('jbu-before', 'jbu')}
# (image size, batch) of the model and head cases; (C, input size, batch) of the stack
FULL = {'image': 512, 'batch': 2, 'stack': (384, 14, 1)}
QUICK = {'image': 64, 'batch': 1, 'stack': (16, 7, 1)}


def _kernel_before(self, guidance):
    """JBUStage.kernel before issue 13: the fixup MLP on the concatenation [K, G]."""
    combined = self.range_kernel(guidance) * self.spatial_kernel()
    combined = combined / combined.sum(1, keepdim=True).clamp(min=1e-7)
    return combined + 0.1 * self.fixup_proj(torch.cat([combined, guidance], dim=1))


def _forward_before(self, source, guidance):
    """JBUStage.forward before issue 13: everything stored for the backward."""
    self._check_inputs(source, guidance)
    kernel = self.kernel(guidance)
    upsampled = F.interpolate(source, guidance.shape[-2:], mode='bicubic', align_corners=False)
    return adaptive_conv(upsampled, kernel.to(upsampled.dtype), jbu_stage.PADDING_MODE)


@contextlib.contextmanager
def stage_before_issue_13():
    """Runs JBUStage as before issue 13 inside the block (same numbers, older operators)."""
    with mock.patch.object(jbu_stage, 'conv1x1',
                           lambda x, weight, bias=None: F.conv2d(x, weight, bias)), \
            mock.patch.object(jbu_stage.JBUStage, 'kernel', _kernel_before), \
            mock.patch.object(jbu_stage.JBUStage, 'forward', _forward_before), \
            mock.patch.object(jbu_stack, 'residual_conv1x1',
                              lambda x, dropout, conv, scale: x + scale * conv(dropout(x))):
        yield


def build_segmentor(upsampler):
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = Config.fromfile(str(ROOT / CONFIG.format(
        'bilinear' if upsampler == 'bilinear' else 'featup-jbu')))
    cfg.model.backbone.init_cfg = None
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return revert_sync_batchnorm(MODELS.build(cfg.model)).train()


def segmentation_batch(size, batch):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen)
    samples = []
    for _ in range(batch):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, size, size), generator=gen))
        sample.set_metainfo(dict(img_shape=(size, size), pad_shape=(size, size),
                                 ori_shape=(size, size)))
        samples.append(sample)
    return images, samples


def make_step(case, impl, sizes):
    """A closure running one forward + backward of the case."""
    torch.manual_seed(0)
    if case == 'stack':
        channels, side, batch = sizes['stack']
        stack = JBUStack(channels).train()
        source = torch.randn(batch, channels, side, side, requires_grad=True)
        image = torch.randn(batch, 3, 16 * side, 16 * side)
        grad = torch.randn(batch, channels, 16 * side, 16 * side)
        return lambda: stack(source, image).backward(grad)
    model = build_segmentor(impl)
    images, samples = segmentation_batch(sizes['image'], sizes['batch'])
    if case == 'model':
        return lambda: model.parse_losses(model.loss(images, samples))[0].backward()
    with torch.no_grad():
        features = model.extract_feat(images)
    head = model.decode_head
    return lambda: model.parse_losses(head.loss(features, samples, model.train_cfg))[0].backward()


def measure(case, impl, sizes, steps):
    """{'s': median seconds of ``steps`` steps after the first, 'peak_mib': the first's}."""
    with stage_before_issue_13() if impl == 'jbu-before' else contextlib.nullcontext():
        step = make_step(case, impl, sizes)
        peak_mib = peak_extra_mib('cpu', step)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return {'s': statistics.median(times), 'peak_mib': peak_mib}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help=f'small sizes {QUICK}, one repeat, measured in this process '
                        '(a smoke test: its memory figures are not meaningful)')
    parser.add_argument('--repeats', type=int, default=None,
                        help='fresh processes per case and implementation (default 3)')
    parser.add_argument('--steps', type=int, default=None,
                        help='timed steps per process (default 2, 1 with --quick)')
    parser.add_argument('--cases', default=','.join(IMPLS),
                        help=f'comma-separated cases out of {",".join(IMPLS)}')
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (1 if args.quick else 2)
    cases = [c for c in args.cases.split(',') if c]
    if set(cases) - set(IMPLS):
        parser.error(f'unknown cases {sorted(set(cases) - set(IMPLS))}')

    print(f'CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, float32; '
          f'model/head: SegFormer-B1 {sizes["image"]} x {sizes["image"]}, batch '
          f'{sizes["batch"]}; stack: C, side, batch = {sizes["stack"]}, x16; '
          f'{repeats} repeats interleaved, {steps} timed steps each')
    print(f'{"case":<7}{"impl":<12}{"median s":>10}{"min s":>8}{"max s":>8}'
          f'{"peak MiB":>10}{"min":>8}{"max":>8}')
    results = {}
    for case in cases:
        runs = {impl: [] for impl in IMPLS[case]}
        for _ in range(repeats):
            for impl in IMPLS[case]:  # interleaved: load on the machine hits all alike
                measure_args = (case, impl, sizes, steps)
                runs[impl].append(measure(*measure_args) if args.quick else
                                  run_in_fresh_process(measure, *measure_args))
        for impl, rows in runs.items():
            secs, mibs = [r['s'] for r in rows], [r['peak_mib'] for r in rows]
            results[case, impl] = (statistics.median(secs), statistics.median(mibs))
            print(f'{case:<7}{impl:<12}{statistics.median(secs):>10.3f}{min(secs):>8.3f}'
                  f'{max(secs):>8.3f}{statistics.median(mibs):>10.0f}{min(mibs):>8.0f}'
                  f'{max(mibs):>8.0f}', flush=True)
    print('ratios (of medians): time, peak memory')
    for case in cases:
        jbu_s, jbu_mib = results[case, 'jbu']
        before_s, before_mib = results[case, 'jbu-before']
        if 'bilinear' in IMPLS[case]:
            bil_s, bil_mib = results[case, 'bilinear']
            print(f'{case:<7}jbu / bilinear         {jbu_s / bil_s:6.2f}x '
                  f'{jbu_mib / max(bil_mib, 1e-9):6.2f}x   (before issue 13: '
                  f'{before_s / bil_s:.2f}x {before_mib / max(bil_mib, 1e-9):.2f}x)')
        print(f'{case:<7}speed-up over before    {before_s / jbu_s:6.2f}x '
              f'{jbu_mib / max(before_mib, 1e-9):6.2f}x of its memory')

if __name__ == '__main__':
    main()
