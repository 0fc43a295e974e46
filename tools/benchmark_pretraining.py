"""CPU cost of FeatUp's pretraining step and of the implicit FeatUp fit, against a baseline.

In one run, interleaving the two trees repeat by repeat (medians over repeats):

- step: FeatUpPretrainHook's loop on a GuidedEncoderDecoder with a timm ViT-S/14 (DINOv2
  architecture, random weights) and a JBU neck upsampling to the image size (four stages,
  FeatUp's feature norm), the paper's objective (attention downsampler, kernel 16, proj_dim
  30, uncertainty), ``--images`` images x 2 views per step;
- implicit: fit_implicit_features with the 'paper' preset on the same backbone's features
  (``--implicit-views`` views computed once: the number of views changes only the views'
  stage, not a step's cost).

'current' is this tree; 'baseline' is the project at ``--baseline`` (default: the main
before this work), its sources exported and its extension built once as
tools/benchmark_jbu_head.py does, then imported instead of this tree's.

Every measurement runs in a fresh Python process. Per step: the wall time, the time in
the backbone's forward passes and the rest; the peak memory is the rise of the peak
resident set (VmHWM) during the steps above the memory in use when they begin, and the
live-tensor peak the same in one more process per case and tree with glibc mapping every
block of 64 KiB or more on its own (see tools/benchmark_jbu_head.py), so a freed tensor
leaves the resident set at once.

    python tools/benchmark_pretraining.py                 # 448 x 336, 2 repeats
    python tools/benchmark_pretraining.py --quick         # tiny sizes, a smoke test
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from benchmark_jbu_head import LIVE_TENSORS_ENV, before_tree
from benchmark_ops import memory_ratio, proc_status_kib

ROOT = Path(__file__).resolve().parents[1]
BASELINE = 'd0d51af'
TREES = ('baseline', 'current')
CASES = ('step', 'implicit')
# the targets of this work: ratios current / baseline
TARGETS = {'outside backbone s': 0.5, 'peak MiB': 0.75}
IMPLICIT_TARGET_SPEED_UP = 3.0
FULL = dict(size=(448, 336), images=2, backbone='vit_small_patch14_dinov2', channels=384,
            implicit_views=16)
QUICK = dict(size=(56, 42), images=1, backbone='vit_small_patch14_dinov2', channels=384,
             implicit_views=4)


class StepClock:
    """Wall and backbone time of each step, from a call at each step's end, and the rise of
    the peak resident set from :meth:`start` on."""

    def __init__(self):
        self.backbone_s = 0.0
        self.marks = []

    def timed(self, forward):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return forward(*args, **kwargs)
            finally:
                self.backbone_s += time.perf_counter() - start
        return wrapper

    def start(self):
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset the peak resident set to the current one
        self.base_kib = proc_status_kib('VmRSS')
        self.mark()

    def mark(self):
        self.marks.append((time.perf_counter(), self.backbone_s))

    def result(self):
        peak_mib = (proc_status_kib('VmHWM') - self.base_kib) / 1024
        steps = [(t1 - t0, b1 - b0) for (t0, b0), (t1, b1) in zip(self.marks, self.marks[1:])]
        timed = steps[1:] or steps  # the first step warms up
        total = statistics.median(s for s, _ in timed)
        backbone = statistics.median(b for _, b in timed)
        return {'s': total, 'backbone_s': backbone, 'peak_mib': peak_mib}


def build_model(sizes):
    import torch
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    import featup_mmseg.plugin  # noqa: F401  (registrations)
    init_default_scope('mmseg')
    torch.manual_seed(0)
    cfg = dict(
        type='GuidedEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               size=tuple(sizes['size'])),
        backbone=dict(type='TIMMBackbone', model_name=sizes['backbone'], pretrained=False,
                      features_only=True, out_indices=(11, ), img_size=tuple(sizes['size'])),
        neck=dict(type='JBUNeck', in_channels=sizes['channels'], out_stride=1, num_stages=4,
                  feature_norm=True),
        decode_head=dict(type='FCNHead', in_channels=sizes['channels'], in_index=-1,
                         channels=sizes['channels'], num_convs=0, concat_input=False,
                         num_classes=2, norm_cfg=dict(type='BN')))
    return MODELS.build(cfg), cfg


def run_step(sizes, steps, clock):
    """FeatUpPretrainHook.pretrain for ``steps`` steps on a runner of random images."""
    import torch
    from mmengine.config import Config
    from mmseg.structures import SegDataSample
    from featup_mmseg.engine import FeatUpPretrainHook
    model, cfg = build_model(sizes)
    model.backbone.forward = clock.timed(model.backbone.forward)
    height, width = sizes['size']
    generator = torch.Generator().manual_seed(0)

    def batches():
        while True:
            images = torch.randint(0, 256, (sizes['images'], 3, height, width),
                                   generator=generator, dtype=torch.uint8)
            samples = [SegDataSample(metainfo=dict(img_shape=(height, width)))
                       for _ in range(sizes['images'])]
            yield dict(inputs=list(images), data_samples=samples)

    def log(message):
        if 'steps of' in message:  # the loop starts
            clock.start()
        elif '/' in message and 'loss' in message:  # a step ended
            clock.mark()

    hook = FeatUpPretrainHook(steps=steps, images_per_step=sizes['images'], num_jitters=2,
                              max_pad=30, max_zoom=2.0, downsampler='attention',
                              kernel_size=16, proj_dim=30, uncertainty=True, log_interval=1)
    with tempfile.TemporaryDirectory() as work_dir:
        runner = SimpleNamespace(
            model=model, work_dir=work_dir, cfg=Config(dict(model=cfg)),
            logger=SimpleNamespace(info=log, warning=lambda message: None),
            train_loop=SimpleNamespace(dataloader_iterator=batches()))
        hook.pretrain(runner)


def run_implicit(sizes, steps, clock):
    """fit_implicit_features with the 'paper' preset for ``steps`` steps."""
    import torch
    from featup_mmseg.layers.implicit_field import ImplicitFitConfig, fit_implicit_features
    model, _ = build_model(sizes)
    model.eval()
    backbone = clock.timed(lambda images: model.backbone(images)[0])
    image = torch.randn(1, 3, *sizes['size'], generator=torch.Generator().manual_seed(0))

    def progress(report):
        if report.stage == 'views' and report.done == report.total:
            clock.start()
        elif report.stage == 'fit':
            clock.mark()

    config = ImplicitFitConfig.preset('paper', steps=steps, num_views=sizes['implicit_views'],
                                      kernel_size=min(29, sizes['size'][0] // 2))
    fit_implicit_features(image, backbone, config, progress, torch.Generator().manual_seed(0))


def measure_request(request):
    """The --measure entry point: one measurement, printed as JSON."""
    import featup_mmseg
    args = json.loads(request)
    imported = Path(featup_mmseg.__file__).resolve().parents[1]
    if imported != Path(args['tree']).resolve():  # e.g. a stale PYTHONPATH entry first
        sys.exit(f'imported featup_mmseg from {imported}, expected {args["tree"]}')
    clock = StepClock()
    (run_step if args['case'] == 'step' else run_implicit)(args['sizes'], args['steps'], clock)
    print(json.dumps(clock.result()))


def measure_in_fresh_process(case, sizes, steps, tree, extra_env=None):
    """measure_request() in a new interpreter that imports featup_mmseg from ``tree``."""
    env = {**os.environ, **(extra_env or {}), 'PYTHONPATH': os.pathsep.join(
        [str(tree), str(ROOT / 'tools'), os.environ.get('PYTHONPATH', '')])}
    request = json.dumps(dict(case=case, sizes=sizes, steps=steps, tree=str(tree)))
    result = subprocess.run([sys.executable, __file__, '--measure', request], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f'benchmark_pretraining: measuring {case} in {tree} failed:\n'
                 f'{result.stderr[-5000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help=f'tiny sizes {QUICK["size"]}, one repeat, two steps (a smoke test)')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help=f'image size (default {FULL["size"]}; multiples of 14)')
    parser.add_argument('--images', type=int, help='images per step (default 2)')
    parser.add_argument('--repeats', type=int, help='fresh processes per case and tree '
                        '(default 2)')
    parser.add_argument('--steps', type=int, help='steps per process, the first untimed '
                        '(default 2)')
    parser.add_argument('--cases', default=','.join(CASES),
                        help=f'comma-separated cases out of {",".join(CASES)}')
    parser.add_argument('--baseline', default=BASELINE,
                        help=f'git commit measured as the baseline (default {BASELINE})')
    parser.add_argument('--baseline-tree', type=Path,
                        help='a source tree with its extension built, measured as the baseline '
                        'instead of --baseline')
    parser.add_argument('--measure', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure_request(args.measure)
    sizes = dict(QUICK if args.quick else FULL)
    if args.size:
        if min(args.size) < 14 or any(n % 14 for n in args.size):
            parser.error(f'--size must be multiples of 14 (the ViT-S/14 patch), got {args.size}')
        sizes['size'] = tuple(args.size)
    if args.images is not None:
        if args.images < 1:
            parser.error(f'--images must be >= 1, got {args.images}')
        sizes['images'] = args.images
    repeats = args.repeats or (1 if args.quick else 2)
    steps = args.steps or 2
    if repeats < 1 or steps < 1:
        parser.error('--repeats and --steps must be >= 1')
    cases = [c for c in args.cases.split(',') if c]
    if not cases or set(cases) - set(CASES):
        parser.error(f'--cases must name some of {",".join(CASES)}, got {args.cases!r}')
    import torch
    trees = {'baseline': (args.baseline_tree or before_tree(args.baseline)).resolve(),
             'current': ROOT}
    print(f'CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, float32; '
          f'{sizes["backbone"]} (random weights) at {sizes["size"][0]} x {sizes["size"][1]}; '
          f'step: {sizes["images"]} images x 2 views; implicit: paper preset, '
          f'{sizes["implicit_views"]} views; {repeats} repeats interleaved, {steps} steps each '
          f'(the first untimed); baseline: {trees["baseline"]}')
    print(f'{"case":<10}{"tree":<10}{"step s":>9}{"backbone s":>12}{"outside s":>11}'
          f'{"peak MiB":>10}{"live MiB":>10}')
    results = {}
    for case in cases:
        runs = {tree: [] for tree in TREES}
        for _ in range(repeats):
            for tree in TREES:  # interleaved: load on the machine hits both alike
                runs[tree].append(measure_in_fresh_process(case, sizes, steps, trees[tree]))
        for tree in TREES:
            live = measure_in_fresh_process(case, sizes, 1, trees[tree],
                                            LIVE_TENSORS_ENV)['peak_mib']
            row = {key: statistics.median(run[key] for run in runs[tree])
                   for key in ('s', 'backbone_s', 'peak_mib')}
            row['outside_s'] = statistics.median(run['s'] - run['backbone_s']
                                                 for run in runs[tree])
            row['live_mib'] = live
            results[case, tree] = row
            print(f'{case:<10}{tree:<10}{row["s"]:>9.2f}{row["backbone_s"]:>12.2f}'
                  f'{row["outside_s"]:>11.2f}{row["peak_mib"]:>10.0f}{live:>10.0f}', flush=True)
    print('ratios current / baseline (of medians): step time, outside the backbone, peak '
          "memory, live peak ('-' where the baseline's peak is too small to resolve)")
    for case in cases:
        new, old = results[case, 'current'], results[case, 'baseline']
        print(f'{case:<10}{new["s"] / old["s"]:6.2f}x {new["outside_s"] / old["outside_s"]:6.2f}x '
              f'{memory_ratio(new["peak_mib"], old["peak_mib"], digits=2):>7} '
              f'{memory_ratio(new["live_mib"], old["live_mib"], digits=2):>7}   '
              f'speed-up {old["s"] / new["s"]:.2f}x')
    print(f'targets: step outside the backbone <= {TARGETS["outside backbone s"]}x, step '
          f'peak <= {TARGETS["peak MiB"]}x; implicit speed-up >= {IMPLICIT_TARGET_SPEED_UP}x')


if __name__ == '__main__':
    main()
