"""Benchmark the compiled window ops and the JBU modules against the unfold reference,
and the cross-scale neighbourhood attention ops against its dense and unfold forms.

Part 'window': for each case it prints forward time, backward time (gradients of every
input and parameter) and peak extra memory of forward+backward, for the compiled ops and
for the pure-PyTorch unfold reference (featup_mmseg.ops.use_reference_ops) measured in the
same run, then their ratios. Cases: the two ops at the shapes below, FeatUp's JBU stack
(B=1, C=384, 14 -> 224) and one JBU stage (B=2, C=256, 64 -> 128, 256-channel guidance).
On CUDA it also prints the ops' achieved bandwidth as a fraction of a device-to-device
copy timed in the same run.

CPU memory is the rise of the process's peak resident set (VmHWM) above the inputs, each
measurement in a fresh process; CUDA memory is torch.cuda.max_memory_allocated above the
inputs. On CPU, op shapes whose reference would not fit --reference-budget-gb are scaled
down (batch first, then spatial size), and the table says so.

Part 'attention': cross-scale neighbourhood attention as NAF runs it (border 'shift'):
queries (B, heads, d, H, W), keys (B, heads, d, h, w), values (B, heads, C / heads, h, w),
a softmax over each query's k x k window of low-res cells, output (B, C, H, W); forward
and forward+backward time and peak extra memory of three forms of the same computation:

- ours: neighbourhood_attention_scores -> softmax -> neighbourhood_attention_aggregate,
  the compiled ops;
- dense: the full (H*W) x (h*w) logits of every head, the cells outside the window set
  to -inf through a boolean mask (built once, outside the timing), softmax, product with
  the values: AnyUp's default path;
- unfold: the same ops' pure-PyTorch reference, which gathers every query's window of
  keys and values into (B*heads, d, k*k, H, W) and (B*heads, C / heads, k*k, H, W)
  tensors: those F.unfold of keys and values upsampled to (H, W) builds.

Shapes: 28 x 28 features, C = 384, to 56, 224 and 448 (x2, x8, x16), NAF's 4 heads of
d = 64 and k = 9, batch 1. A form whose rough peak exceeds the budget (on CPU
--reference-budget-gb, on CUDA the device's memory) is skipped and shown as '-'.

Part 'range': a JBU stage's range kernel, spatial kernel and normalisation from keys
(B, D = 32, H, W) and its two parameters, forward and backward (gradients of keys and
parameters), for each range kernel: the fused op (normalized_range_kernel) against the
composition of the compiled window ops it replaces (normalized_range_kernel_reference
over window_correlation), interleaved in one process; shapes (B, D, H, W, k) = the finest
stages of a SegFormer-B1 head (2, 32, 128, 128, 7) and of FeatUp's JBUStack
(1, 32, 224, 224, 7).

    python tools/benchmark_ops.py                   # CPU, and CUDA when available
    python tools/benchmark_ops.py --device cpu --quick
    python tools/benchmark_ops.py --part attention --reference-budget-gb 40
    python tools/benchmark_ops.py --part range --device cpu
"""
import argparse
import contextlib
import functools
import multiprocessing
import statistics
import time

import torch

from featup_mmseg import ops
from featup_mmseg.layers import JBUStack, JBUStage
from featup_mmseg.ops import adaptive_conv, ext_available, use_reference_ops, window_correlation
from featup_mmseg.ops import reference as reference_ops

# (B, C, H, W, k) of the ops; window_correlation runs with D = 32 keys at the same sizes.
SHAPES = [(2, 256, 128, 128, 7), (1, 384, 224, 224, 7), (16, 2048, 32, 32, 5),
          (64, 16, 64, 64, 7)]
QUICK_SHAPES = [(2, 64, 64, 64, 7)]
KEY_DIM = 32
# Peaks below this are not resolved: on CPU a small case may be served from memory the
# heap already holds, so its resident set barely rises; their ratio is then shown as '-'.
MIN_RESOLVED_PEAK_MIB = 1.0
OPS = ('adaptive_conv', 'window_correlation')
MODULES = {
    'jbu_stack': 'B=1, C=384, 14 -> 224',
    'jbu_stage': 'B=2, C=256, 64 -> 128, Cg=256',
}
TINY_CASE = ('adaptive_conv', (1, 1, 8, 8, 3))

# Part 'attention': (B, heads, d, C, h, H, k), square maps h x h -> H x H.
ATTENTION = 'neighbourhood_attention'
ATTENTION_SHAPES = [(1, 4, 64, 384, 28, 28 * ratio, 9) for ratio in (2, 8, 16)]
QUICK_ATTENTION_SHAPES = [(1, 4, 64, 384, 10, 10 * ratio, 9) for ratio in (2, 4, 8)]
# form -> the implementation measure() runs ('reference': under use_reference_ops())
ATTENTION_FORMS = {'ours': 'compiled', 'dense': 'dense', 'unfold': 'reference'}
ATTENTION_BORDER = 'shift'  # NAF's window; the dense mask equals it (no repeated cells)

# Part 'range': (B, D, H, W, k) of the keys
RANGE_SHAPES = [(2, 32, 128, 128, 7), (1, 32, 224, 224, 7)]
QUICK_RANGE_SHAPES = [(1, 8, 32, 32, 7)]


def op_shape(op, shape):
    batch, channels, height, width, k = shape
    return (batch, KEY_DIM if op == 'window_correlation' else channels, height, width, k)


def window_mask(high, low, kernel_size, device):
    """(high*high, low*low) bool: which low-res cells each query's window holds."""
    # through the modules, so that a baseline tree without these ops can import this file
    sources = reference_ops.neighbourhood_sources(high, low, kernel_size, 1, ATTENTION_BORDER,
                                                  device)
    axis = torch.zeros(high, low, dtype=torch.bool, device=device).scatter_(1, sources, True)
    return (axis[:, None, :, None] & axis[None, :, None, :]).reshape(high * high, low * low)


def attention_forward(queries, keys, values, kernel_size, outside_window=None):
    """(B, C, H, W) neighbourhood attention of queries (B, heads, d, H, W) over keys and
    values (B, heads, d | c, h, w): through the window ops, or, given ``outside_window``
    ((H*W) x (h*w) bool), densely."""
    batch, heads, _, height, width = queries.shape
    if outside_window is not None:
        logits = queries.flatten(3).transpose(2, 3) @ keys.flatten(3)  # (B, heads, HW, hw)
        weights = logits.masked_fill(outside_window, float('-inf')).softmax(-1)
        out = values.flatten(3) @ weights.transpose(2, 3)  # (B, heads, c, HW)
    else:
        scores = ops.neighbourhood_attention_scores(queries.flatten(0, 1), keys.flatten(0, 1),
                                                    kernel_size, border=ATTENTION_BORDER)
        out = ops.neighbourhood_attention_aggregate(scores.softmax(1), values.flatten(0, 1),
                                                    border=ATTENTION_BORDER)
    return out.reshape(batch, -1, height, width)


def make_case(name, shape, device, impl='compiled'):
    """(forward, backward, inputs) of one case; backward(out) fills every gradient. impl
    matters to the attention only (its dense form); measure() switches the ops'."""
    gen = torch.Generator().manual_seed(0)

    def rand(*size, grad=True):
        return torch.randn(*size, generator=gen).to(device).requires_grad_(grad)

    if name == ATTENTION:
        batch, heads, dim, channels, low, high, k = shape
        inputs = [rand(batch, heads, dim, high, high), rand(batch, heads, dim, low, low),
                  rand(batch, heads, channels // heads, low, low)]
        outside_window = ~window_mask(high, low, k, device) if impl == 'dense' else None
        forward = lambda: attention_forward(*inputs, k, outside_window)  # noqa: E731
        out_shape = (batch, channels, high, high)
    elif name in OPS:
        batch, channels, height, width, k = shape
        if name == 'adaptive_conv':
            inputs = [rand(batch, channels, height, width), rand(batch, k * k, height, width)]
            forward = lambda: adaptive_conv(*inputs)  # noqa: E731
            out_shape = (batch, channels, height, width)
        else:
            inputs = [rand(batch, channels, height, width)]
            forward = lambda: window_correlation(inputs[0], k)  # noqa: E731
            out_shape = (batch, k * k, height, width)
    elif name == 'jbu_stack':
        module = JBUStack(384).to(device)
        inputs = [rand(1, 384, 14, 14), rand(1, 3, 224, 224, grad=False)]
        forward = lambda: module(*inputs)  # noqa: E731
        out_shape = (1, 384, 224, 224)
    else:
        module = JBUStage(guidance_dim=256).to(device)
        inputs = [rand(2, 256, 64, 64), rand(2, 256, 128, 128)]
        forward = lambda: module(*inputs)  # noqa: E731
        out_shape = (2, 256, 128, 128)
    grad_out = rand(*out_shape, grad=False)
    return forward, lambda out: out.backward(grad_out), inputs


def reference_bytes(shape):
    """Rough peak of an unfold-reference op: patches, their product, and the backward."""
    batch, channels, height, width, k = shape
    return 3 * batch * channels * k * k * height * width * 4


def attention_bytes(impl, shape):
    """Rough peak of one form of the attention, forward and backward. Measured peaks
    (10 -> 20, 14 -> 28 and 56, CPU) were about 2.2x the tensors counted here for ours and
    unfold, 5x for dense: the factors round those up."""
    batch, heads, dim, channels, low, high, k = shape
    per_query = {
        'compiled': 3 * (heads * k * k + channels),  # scores, weights, output
        'dense': 5 * heads * low * low,  # logits, masked, weights, and their gradients
        'reference': 3 * (heads * dim + channels) * k * k,  # windows of keys and values
    }[impl]
    return batch * high * high * per_query * 4


def scale_to_budget(shape, budget_bytes):
    batch, channels, height, width, k = shape
    while reference_bytes((batch, channels, height, width, k)) > budget_bytes:
        if batch > 1:
            batch //= 2
        else:
            height, width = height // 2, width // 2
    return (batch, channels, height, width, k)


# ----------------------------------------------------------------------------------------
# measurement

def proc_status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def time_ms(device, fn, setup=None):
    """Wall time of fn() in ms; setup() runs untimed before it and feeds it."""
    arg = setup() if setup else None
    if device == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(arg) if setup else fn()
    if device == 'cuda':
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def memory_ratio(ours_mib, reference_mib, digits):
    """ours / reference as text ('0.135x'), or '-' where the reference's peak is too
    small to resolve."""
    if reference_mib < MIN_RESOLVED_PEAK_MIB:
        return '-'
    return f'{ours_mib / reference_mib:.{digits}f}x'


def peak_extra_mib(device, fn):
    """Peak memory of fn() above the memory in use before it, in MiB: on CUDA
    torch.cuda.max_memory_allocated, on CPU the rise of the process's peak resident set."""
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak resident set to the current one
    base = proc_status_kib('VmRSS')
    fn()
    return (proc_status_kib('VmHWM') - base) / 1024


def measure(name, shape, impl, device, repeats, whole_step=False):
    """Forward ms, backward ms ('bwd_ms'; with whole_step forward+backward ms, 'step_ms')
    and peak extra MiB of one implementation of one case."""
    with use_reference_ops() if impl == 'reference' else contextlib.nullcontext():
        if device == 'cpu':
            # Warm up thread pools and lazy initialisation on a tiny case, which leaves no
            # sizeable memory cached in the heap.
            tiny_forward, tiny_backward, _ = make_case(*TINY_CASE, device)
            tiny_backward(tiny_forward())
        forward, backward, inputs = make_case(name, shape, device, impl)
        step = lambda: backward(forward())  # noqa: E731
        peak_mib = peak_extra_mib(device, step)
        if device == 'cuda':
            for _ in range(3):
                step()
        fwd = statistics.median(time_ms(device, forward) for _ in range(repeats))
        if whole_step:
            second = {'step_ms': statistics.median(time_ms(device, step)
                                                   for _ in range(repeats))}
        else:
            second = {'bwd_ms': statistics.median(time_ms(device, backward, setup=forward)
                                                  for _ in range(repeats))}
    return {'fwd_ms': fwd, **second, 'peak_mib': peak_mib}


def run_in_fresh_process(fn, *args, start_method='spawn'):
    # A fresh process per CPU measurement: its peak resident set then reflects only
    # this measurement, not memory an earlier one left cached in the heap.
    ctx = multiprocessing.get_context(start_method)
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def copy_gbps(device, numel):
    """Bandwidth of a device-to-device copy, counting bytes read and written."""
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ms = statistics.median(time_ms(device, lambda: dst.copy_(src)) for _ in range(20))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def traffic_bytes(op, shape):
    """Minimal forward and backward traffic of an op: every operand read or written once."""
    batch, channels, height, width, k = shape
    plane = batch * height * width * 4
    if op == 'adaptive_conv':
        fwd = (2 * channels + k * k) * plane  # x, kernel -> out
        bwd = (3 * channels + 2 * k * k) * plane  # grad, x, kernel -> grad_x, grad_kernel
    else:
        fwd = (channels + k * k) * plane  # q -> logits
        bwd = (2 * channels + k * k) * plane  # grad, q -> grad_q
    return fwd, bwd


# ----------------------------------------------------------------------------------------
# report

def measure_apart(device, *args, **kwargs):
    """measure(device=device, ...) in a fresh process on CPU; on CUDA in this one, its
    cached blocks released afterwards so that the next measurement starts bare."""
    if device == 'cpu':
        return run_in_fresh_process(functools.partial(measure, device=device, **kwargs), *args)
    result = measure(*args, device=device, **kwargs)
    torch.cuda.empty_cache()
    return result


def run_case(name, shape, label, device, repeats, copy_bandwidth, note=''):
    results = {}
    for impl in ('compiled', 'reference'):
        results[impl] = row = measure_apart(device, name, shape, impl, repeats=repeats)
        print(f'{name:<19}{label:<30}{impl:<10}{row["fwd_ms"]:>10.2f}{row["bwd_ms"]:>10.2f}'
              f'{row["peak_mib"]:>11.1f}', flush=True)
    ours, ref = results['compiled'], results['reference']
    print(f'{"":<49}{"ratio":<10}{ref["fwd_ms"] / ours["fwd_ms"]:>9.1f}x'
          f'{ref["bwd_ms"] / ours["bwd_ms"]:>9.1f}x '
          f'{memory_ratio(ours["peak_mib"], ref["peak_mib"], digits=3):>10}{note}')
    if copy_bandwidth and name in OPS:
        fwd_bytes, bwd_bytes = traffic_bytes(name, shape)
        print(f'{"":<49}compiled moves {fwd_bytes / ours["fwd_ms"] / 1e6:.0f} GB/s fwd '
              f'({fwd_bytes / ours["fwd_ms"] / 1e6 / copy_bandwidth:.0%} of a device copy) '
              f'and {bwd_bytes / ours["bwd_ms"] / 1e6:.0f} GB/s bwd '
              f'({bwd_bytes / ours["bwd_ms"] / 1e6 / copy_bandwidth:.0%})')


def run_window_part(device, shapes, modules, repeats, budget_bytes):
    print('\nwindow ops and JBU modules; ratio: speed-up of compiled over reference (fwd, '
          'bwd), and compiled peak memory as a fraction of the reference\'s (\'-\' where the '
          f'reference peaks below {MIN_RESOLVED_PEAK_MIB:g} MiB, too little to measure)')
    copy_bandwidth = None
    if device == 'cuda':
        copy_bandwidth = copy_gbps(device, 256 * 2**20)
        print(f'device-to-device copy: {copy_bandwidth:.0f} GB/s')
    print(f'{"case":<19}{"shape":<30}{"impl":<10}{"fwd ms":>10}{"bwd ms":>10}{"peak MiB":>11}')
    for op in OPS:
        for requested in shapes:
            shape = op_shape(op, requested)
            if device == 'cpu':
                shape = scale_to_budget(shape, budget_bytes)
            note = '' if shape == op_shape(op, requested) else \
                f'   (scaled down from {op_shape(op, requested)}: reference too large)'
            run_case(op, shape, str(shape), device, repeats, copy_bandwidth, note)
    for module in modules:
        run_case(module, None, MODULES[module], device, repeats, copy_bandwidth)


def run_attention_part(device, shapes, repeats, budget_bytes):
    print(f"\ncross-scale neighbourhood attention, border '{ATTENTION_BORDER}', shape (B, "
          'heads, d, C, h, H, k): queries (B, heads, d, H, W), keys (B, heads, d, h, w), '
          'values (B, heads, C / heads, h, w) -> (B, C, H, W); forms: ours (the compiled ops), '
          'dense (masked (H*W) x (h*w) logits), unfold (windows gathered per query)')
    print('vs X: speed-up of ours over form X (fwd, fwd+bwd), and ours\' peak memory as a '
          'fraction of X\'s; \'-\' where a form was skipped (its rough peak over the budget, '
          f'{budget_bytes / 2**30:.3g} GiB) or X peaks below {MIN_RESOLVED_PEAK_MIB:g} MiB')
    print(f'{"case":<36}{"form":<11}{"fwd ms":>10}{"fwd+bwd ms":>12}{"peak MiB":>11}')
    for shape in shapes:
        label = f'x{shape[5] / shape[4]:g} {shape}'
        results = {}
        for form, impl in ATTENTION_FORMS.items():
            need = attention_bytes(impl, shape)
            if need > budget_bytes:
                results[form] = None
                print(f'{label:<36}{form:<11}{"-":>10}{"-":>12}{"-":>11}   (skipped: needs '
                      f'about {need / 2**30:.3g} GiB)', flush=True)
            else:
                results[form] = row = measure_apart(device, ATTENTION, shape, impl,
                                                    repeats=repeats, whole_step=True)
                print(f'{label:<36}{form:<11}{row["fwd_ms"]:>10.2f}{row["step_ms"]:>12.2f}'
                      f'{row["peak_mib"]:>11.1f}', flush=True)
            label = ''
        ours = results['ours']
        for form in ('dense', 'unfold'):
            other = results[form]
            ratios = ('-', '-', '-') if ours is None or other is None else (
                f'{other["fwd_ms"] / ours["fwd_ms"]:.2f}x',
                f'{other["step_ms"] / ours["step_ms"]:.2f}x',
                memory_ratio(ours['peak_mib'], other['peak_mib'], digits=3))
            print(f'{"":<36}{"vs " + form:<11}{ratios[0]:>10}{ratios[1]:>12}{ratios[2]:>11}')


def run_range_part(device, shapes, repeats):
    print('\nJBU range kernel (range kernel x spatial kernel, normalised), keys (B, D, H, W), '
          'forward and backward; ratio: speed-up of the fused op over the composition')
    print(f'{"variant":<20}{"shape":<24}{"impl":<13}{"fwd ms":>10}{"bwd ms":>10}')
    for shape in shapes:
        batch, dim, height, width, k = shape
        gen = torch.Generator().manual_seed(0)
        keys = torch.randn(batch, dim, height, width, generator=gen).to(device)
        grad = torch.randn(batch, k * k, height, width, generator=gen).to(device)
        for variant in ops.RANGE_VARIANTS:
            inputs = [torch.nn.functional.normalize(keys, dim=1)
                      if variant == 'gaussian_cosine' else keys.clone(),
                      torch.tensor(0.0, device=device), torch.tensor(1.0, device=device)]
            inputs = [t.requires_grad_() for t in inputs]
            forms = {
                'fused': lambda: ops.normalized_range_kernel(*inputs, k, variant),
                'composition': lambda: ops.normalized_range_kernel_reference(
                    *inputs, k, variant, correlation=ops.window_correlation)}
            times = {name: ([], []) for name in forms}
            for _ in range(repeats + 1):  # interleaved; the first round warms up
                for name, forward in forms.items():
                    fwd, bwd = times[name]
                    fwd.append(time_ms(device, forward))
                    bwd.append(time_ms(device, lambda out: out.backward(grad), setup=forward))
            medians = {name: (statistics.median(f[1:]), statistics.median(b[1:]))
                       for name, (f, b) in times.items()}
            for name, (fwd, bwd) in medians.items():
                print(f'{variant:<20}{str(shape):<24}{name:<13}{fwd:>10.2f}{bwd:>10.2f}')
            (fused_fwd, fused_bwd), (comp_fwd, comp_bwd) = medians.values()
            print(f'{"":<44}{"ratio":<13}{comp_fwd / fused_fwd:>9.2f}x'
                  f'{comp_bwd / fused_bwd:>9.2f}x', flush=True)


def parse_shapes(text):
    """'1,2,3;4,5,6' -> [(1, 2, 3), (4, 5, 6)]."""
    return [tuple(int(v) for v in s.split(',')) for s in text.split(';')]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=['cpu', 'cuda', 'all'], default='all')
    parser.add_argument('--part', choices=['window', 'attention', 'range', 'all'],
                        default='all',
                        help="'window': the window ops and JBU modules; 'attention': the "
                        "cross-scale neighbourhood attention forms; 'range': the fused JBU "
                        'range kernel against its composition')
    parser.add_argument('--quick', action='store_true',
                        help=f'one op shape {QUICK_SHAPES[0]}, no module cases, attention '
                        f'shapes {QUICK_ATTENTION_SHAPES}, range shapes {QUICK_RANGE_SHAPES}')
    parser.add_argument('--shapes', type=str, default=None,
                        help='semicolon-separated B,C,H,W,k op shapes, e.g. "2,16,32,32,7"')
    parser.add_argument('--attention-shapes', type=str, default=None,
                        help='semicolon-separated B,heads,d,C,h,H,k attention shapes (h x h '
                        '-> H x H), e.g. "1,4,64,384,28,56,9"')
    parser.add_argument('--modules', type=str, default=None,
                        help=f'comma-separated module cases out of {",".join(MODULES)} '
                        '(default: all; none with --quick or --shapes)')
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed repeats (default 3 on CPU, 20 on CUDA)')
    parser.add_argument('--reference-budget-gb', type=float, default=12.0,
                        help='CPU: scale op shapes down until the reference needs less, and '
                        'skip the attention forms that would need more')
    args = parser.parse_args()

    shapes = QUICK_SHAPES if args.quick else SHAPES
    modules = [] if args.quick or args.shapes else list(MODULES)
    if args.shapes:
        shapes = parse_shapes(args.shapes)
    attention_shapes = QUICK_ATTENTION_SHAPES if args.quick else ATTENTION_SHAPES
    if args.attention_shapes:
        attention_shapes = parse_shapes(args.attention_shapes)
    if args.modules is not None:
        modules = [m for m in args.modules.split(',') if m]
        unknown = set(modules) - set(MODULES)
        if unknown:
            parser.error(f'unknown module cases {sorted(unknown)}; choose from {list(MODULES)}')
    devices = ['cpu', 'cuda'] if args.device == 'all' else [args.device]
    if 'cuda' in devices and not torch.cuda.is_available():
        if args.device == 'cuda':
            parser.error('no CUDA device is available')
        devices.remove('cuda')
    for device in devices:
        repeats = args.repeats or (20 if device == 'cuda' else 3)
        print(f'\n== {device}: {torch.cuda.get_device_name() if device == "cuda" else "CPU"}, '
              f'torch {torch.__version__}, {torch.get_num_threads()} threads, compiled ops: '
              f'{ext_available(device)}, float32, times are medians of {repeats} ==')
        if args.part in ('window', 'all'):
            run_window_part(device, shapes, modules, repeats, args.reference_budget_gb * 2**30)
        if args.part in ('attention', 'all'):
            budget_bytes = args.reference_budget_gb * 2**30 if device == 'cpu' else \
                torch.cuda.get_device_properties(device).total_memory
            run_attention_part(device, attention_shapes, repeats, budget_bytes)
        if args.part in ('range', 'all'):
            run_range_part(device, QUICK_RANGE_SHAPES if args.quick else RANGE_SHAPES,
                           repeats)


if __name__ == '__main__':
    main()
