"""Training cost of FeatUp's JBU in SegFormer-B1, against bilinear and an earlier commit.

In one run, interleaving the implementations repeat by repeat (medians over repeats):

- model: a SegFormer-B1 training step (model.loss forward + backward) at 512 x 512,
  batch 2, with the bilinear head and with the JBU head;
- head: the decode head alone (its loss forward + backward) on fixed backbone features;
- stack: FeatUp's JBUStack (C = 384, 14 -> 224, batch 1) forward + backward, the backward
  from a fixed random gradient of its output (no loss timed with it).

'jbu' is this tree; 'jbu-before' is the same case run by the project as it was at another
commit (``--before``, default the JBU stage before its memory and speed work: its sources
are exported to build/ and its
extension is built there once, then imported instead of this tree's), compiled kernels
included. So one run gives both the ratio to bilinear and the speed-up.

Every measurement runs in a fresh Python process: the peak memory is the rise during the
first step above the built model and inputs (on CPU of the process's peak resident set,
VmHWM; on CUDA of torch.cuda.max_memory_allocated), as in tools/benchmark_ops.py; the
time is the median of the following steps (on CUDA after warm-up steps, synchronized).

On CPU the resident set also counts what glibc's heap keeps of freed tensors (below its
mmap threshold, up to 32 MiB, freed blocks stay resident and fragment), which moves with
the order and sizes of allocations rather than with what a step needs. So a CPU run also
reports the peak of live tensors, like CUDA's max_memory_allocated: one more process per
case and implementation, its first step with glibc told to map every block of 64 KiB or
more on its own (MALLOC_MMAP_THRESHOLD_), so that a freed tensor leaves the resident set
at once. On CUDA the live peak is the peak.

``--count-ops`` instead counts the ops dispatched by one forward + backward of the decode
head (views and allocations excluded; each is at least one kernel launch on a GPU) for the
bilinear head and the JBU head on the CPU's code path and on the accelerators' path
(``featup_mmseg.layers.accelerator_paths``: what a GPU runs, counted on CPU tensors).

    python tools/benchmark_jbu_head.py                  # CPU, SegFormer-B1 sizes
    python tools/benchmark_jbu_head.py --device cuda    # the same on the GPU
    python tools/benchmark_jbu_head.py --quick          # small sizes, a smoke test
    python tools/benchmark_jbu_head.py --count-ops      # ops per head step, both paths
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the JBU stage and kernels before their memory and speed work (docs/benchmarks.md)
BEFORE_COMMIT = 'bd67b9a8f39c4762cae6f12e92d7e3f985be50fb'
CONFIG = 'configs/featup_segformer/segformer_mit-b1_{}_8xb2-160k_ade20k-512x512.py'
IMPLS = {'model': ('bilinear', 'jbu-before', 'jbu'), 'head': ('bilinear', 'jbu-before', 'jbu'),
         'stack': ('jbu-before', 'jbu')}
# untimed steps before the timed ones on CUDA (allocator caching, cuDNN/cuBLAS choices)
CUDA_WARMUP_STEPS = 3
# glibc's settings for the CPU live-tensor measurement (see the module docstring)
LIVE_TENSORS_ENV = {'MALLOC_MMAP_THRESHOLD_': str(64 * 1024)}
# (image size, batch) of the model and head cases; (C, input size, batch) of the stack
FULL = {'image': 512, 'batch': 2, 'stack': (384, 14, 1)}
QUICK = {'image': 64, 'batch': 1, 'stack': (16, 7, 1)}
# --count-ops: what is not counted (no kernel of its own), and the target per path
ALLOCATIONS = ('empty', 'empty_strided', 'empty_like', 'new_empty', 'new_empty_strided')
OP_COUNT_TARGET = 300


def before_tree(ref: str) -> Path:
    """The sources of git commit ``ref`` in build/, with their extension built in place."""
    commit = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--verify', f'{ref}^{{commit}}'],
                            capture_output=True, text=True)
    if commit.returncode != 0:
        sys.exit(f'benchmark_jbu_head: --before {ref!r} is not a commit of this repository '
                 f'({commit.stderr.strip()}); a shallow clone needs `git fetch --unshallow`')
    tree = ROOT / 'build' / 'benchmark-before' / commit.stdout.strip()
    if not (tree / '.built').exists():
        print(f'building the extension of {ref} in {tree} (once)', flush=True)
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(['git', '-C', str(ROOT), 'archive', commit.stdout.strip()],
                                   stdout=subprocess.PIPE)
        subprocess.run(['tar', '-x', '-C', str(tree)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            sys.exit(f'benchmark_jbu_head: git archive {ref} failed')
        import torch
        env = {**os.environ, **({} if torch.cuda.is_available() else {'FORCE_CUDA': '0'})}
        subprocess.run([sys.executable, 'setup.py', 'build_ext', '--inplace'], cwd=tree,
                       env=env, check=True, stdout=subprocess.DEVNULL)
        (tree / '.built').touch()
    return tree


def build_segmentor(upsampler):
    import featup_mmseg
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    tree = Path(featup_mmseg.__file__).resolve().parents[1]  # this tree's or --before's
    cfg = Config.fromfile(str(tree / CONFIG.format(
        'bilinear' if upsampler == 'bilinear' else 'featup-jbu')))
    cfg.model.backbone.init_cfg = None
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return revert_sync_batchnorm(MODELS.build(cfg.model)).train()


def segmentation_batch(size, batch, device):
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    samples = []
    for _ in range(batch):
        sample = SegDataSample()
        labels = torch.randint(0, 150, (1, size, size), generator=gen)
        sample.gt_sem_seg = PixelData(data=labels.to(device))
        sample.set_metainfo(dict(img_shape=(size, size), pad_shape=(size, size),
                                 ori_shape=(size, size)))
        samples.append(sample)
    return images, samples


def make_step(case, impl, sizes, device):
    """A closure running one forward + backward of the case, and the module it trains."""
    import torch
    from featup_mmseg.layers import JBUStack
    torch.manual_seed(0)
    if case == 'stack':
        channels, side, batch = sizes['stack']
        stack = JBUStack(channels).train().to(device)
        source = torch.randn(batch, channels, side, side, device=device, requires_grad=True)
        image = torch.randn(batch, 3, 16 * side, 16 * side, device=device)
        grad = torch.randn(batch, channels, 16 * side, 16 * side, device=device)
        return lambda: stack(source, image).backward(grad), stack
    model = build_segmentor(impl).to(device)
    images, samples = segmentation_batch(sizes['image'], sizes['batch'], device)
    if case == 'model':
        return lambda: model.parse_losses(model.loss(images, samples))[0].backward(), model
    with torch.no_grad():
        features = model.extract_feat(images)
    head = model.decode_head
    return (lambda: model.parse_losses(head.loss(features, samples, model.train_cfg))[0]
            .backward(), head)


def count_ops(impl, sizes, accelerator_path=False):
    """Ops dispatched by one forward + backward of the decode head, by name (views and
    allocations excluded), after one uncounted step (first-call probes and caches) and with
    the gradients then cleared, as a training step's zero_grad does."""
    import collections
    import contextlib
    from torch.utils._python_dispatch import TorchDispatchMode
    from featup_mmseg.layers import accelerator_paths
    counts = collections.Counter()

    class OpCounter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if not func.is_view and name not in ALLOCATIONS:
                counts[f'{func.namespace}::{name}'] += 1
            return func(*args, **(kwargs or {}))

    paths = accelerator_paths if accelerator_path else contextlib.nullcontext
    with paths():
        step, head = make_step('head', impl, sizes, 'cpu')
        step()
        head.zero_grad(set_to_none=True)
        with OpCounter():
            step()
    return counts


def print_op_counts(sizes):
    print(f'ops dispatched by one forward + backward of the SegFormer-B1 decode head '
          f'({sizes["image"]} x {sizes["image"]}, batch {sizes["batch"]}; views and '
          'allocations excluded), on CPU tensors')
    print(f'{"head":<30}{"ops":>6}{"/ bilinear":>12}   most dispatched')
    bilinear = None
    for label, impl, accelerator_path in (('bilinear', 'bilinear', False),
                                          ('jbu, CPU path', 'jbu', False),
                                          ('jbu, accelerator path', 'jbu', True)):
        counts = count_ops(impl, sizes, accelerator_path)
        total = sum(counts.values())
        bilinear = bilinear or total
        common = ', '.join(f'{name.split("::")[-1]} {n}' for name, n in counts.most_common(8))
        print(f'{label:<30}{total:>6}{total / bilinear:>11.1f}x   {common}', flush=True)
    print(f'target: at most {OP_COUNT_TARGET} ops on each path of the JBU head')


def measure(case, impl, sizes, steps, device):
    """{'s': median seconds of ``steps`` steps after the first (and, on CUDA, after
    warm-up steps), 'peak_mib': the first's}; with ``steps`` 0 only the peak."""
    from benchmark_ops import peak_extra_mib, time_ms
    step, _ = make_step(case, impl, sizes, device)
    peak_mib = peak_extra_mib(device, step)
    if steps == 0:
        return {'peak_mib': peak_mib}
    for _ in range(CUDA_WARMUP_STEPS if device == 'cuda' else 0):
        step()
    times = [time_ms(device, step) / 1e3 for _ in range(steps)]
    return {'s': statistics.median(times), 'peak_mib': peak_mib}


def measure_in_fresh_process(case, impl, sizes, steps, device, tree, extra_env=None):
    """measure() in a new interpreter that imports featup_mmseg from ``tree``."""
    env = {**os.environ, **(extra_env or {}), 'PYTHONPATH': os.pathsep.join(
        [str(tree), str(ROOT / 'tools'), os.environ.get('PYTHONPATH', '')])}
    request = json.dumps(dict(case=case, impl=impl, sizes=sizes, steps=steps, device=device,
                              tree=str(tree)))
    result = subprocess.run([sys.executable, __file__, '--measure', request], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f'benchmark_jbu_head: measuring {case}/{impl} failed:\n{result.stderr}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_request(request):
    """The --measure entry point: one measurement, printed as JSON."""
    import featup_mmseg
    args = json.loads(request)
    imported = Path(featup_mmseg.__file__).resolve().parents[1]
    if imported != Path(args['tree']).resolve():  # e.g. a stale PYTHONPATH entry first
        sys.exit(f'imported featup_mmseg from {imported}, expected {args["tree"]}')
    print(json.dumps(measure(args['case'], args['impl'], args['sizes'], args['steps'],
                             args['device'])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--quick', action='store_true',
                        help=f'small sizes {QUICK}, one repeat (a smoke test)')
    parser.add_argument('--repeats', type=int, default=None,
                        help='fresh processes per case and implementation (default 3)')
    parser.add_argument('--steps', type=int, default=None,
                        help='timed steps per process (default 2 on CPU, 20 on CUDA; 1 with '
                        '--quick)')
    parser.add_argument('--cases', default=','.join(IMPLS),
                        help=f'comma-separated cases out of {",".join(IMPLS)}')
    parser.add_argument('--before', default=BEFORE_COMMIT,
                        help='git commit measured as jbu-before (default: the JBU stage '
                        'before its memory and speed work, bd67b9a)')
    parser.add_argument('--before-tree', type=Path, default=None,
                        help='a source tree with its extension built, measured as jbu-before '
                        'instead of --before')
    parser.add_argument('--count-ops', action='store_true',
                        help='count the ops of a decode-head step on both code paths instead '
                        'of timing (CPU)')
    parser.add_argument('--measure', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure_request(args.measure)
    sizes = QUICK if args.quick else FULL
    if args.count_ops:
        return print_op_counts(sizes)
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (1 if args.quick else 20 if args.device == 'cuda' else 2)
    cases = [c for c in args.cases.split(',') if c]
    if set(cases) - set(IMPLS):
        parser.error(f'unknown cases {sorted(set(cases) - set(IMPLS))}')
    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    before = (args.before_tree or before_tree(args.before)).resolve()

    machine = torch.cuda.get_device_name() if args.device == 'cuda' else \
        f'CPU, {torch.get_num_threads()} threads'
    print(f'{machine}, torch {torch.__version__}, float32; '
          f'model/head: SegFormer-B1 {sizes["image"]} x {sizes["image"]}, batch '
          f'{sizes["batch"]}; stack: C, side, batch = {sizes["stack"]}, x16; '
          f'{repeats} repeats interleaved, {steps} timed steps each; jbu-before: {before}')
    print(f'{"case":<7}{"impl":<12}{"median s":>10}{"min s":>8}{"max s":>8}'
          f'{"peak MiB":>10}{"min":>8}{"max":>8}{"live MiB":>10}')
    results = {}
    trees = {impl: before if impl == 'jbu-before' else ROOT
             for impls in IMPLS.values() for impl in impls}
    for case in cases:
        runs = {impl: [] for impl in IMPLS[case]}
        live = {}
        for _ in range(repeats):
            for impl in IMPLS[case]:  # interleaved: load on the machine hits all alike
                runs[impl].append(measure_in_fresh_process(case, impl, sizes, steps,
                                                           args.device, trees[impl]))
        for impl in IMPLS[case]:
            live[impl] = runs[impl][0]['peak_mib'] if args.device == 'cuda' else \
                measure_in_fresh_process(case, impl, sizes, 0, args.device, trees[impl],
                                         LIVE_TENSORS_ENV)['peak_mib']
        for impl, rows in runs.items():
            secs, mibs = [r['s'] for r in rows], [r['peak_mib'] for r in rows]
            results[case, impl] = (statistics.median(secs), statistics.median(mibs),
                                   live[impl])
            print(f'{case:<7}{impl:<12}{statistics.median(secs):>10.3f}{min(secs):>8.3f}'
                  f'{max(secs):>8.3f}{statistics.median(mibs):>10.0f}{min(mibs):>8.0f}'
                  f'{max(mibs):>8.0f}{live[impl]:>10.0f}', flush=True)
    from benchmark_ops import memory_ratio

    def ratios(time, ours, reference):
        """time's ratio, then ours / reference's peak and live memory."""
        return (f'{time:6.2f}x {memory_ratio(ours[1], reference[1], digits=2):>7} '
                f'{memory_ratio(ours[2], reference[2], digits=2):>7}')

    print('ratios (of medians): time, peak memory, peak of live tensors (\'-\' where the '
          'reference\'s peak is too small to resolve)')
    for case in cases:
        jbu, before = results[case, 'jbu'], results[case, 'jbu-before']
        if 'bilinear' in IMPLS[case]:
            bilinear = results[case, 'bilinear']
            print(f'{case:<7}jbu / bilinear         '
                  f'{ratios(jbu[0] / bilinear[0], jbu, bilinear)}   (before: '
                  f'{ratios(before[0] / bilinear[0], before, bilinear).strip()})')
        print(f'{case:<7}speed-up over before    {ratios(before[0] / jbu[0], jbu, before)} '
              'of its memory')

if __name__ == '__main__':
    main()
