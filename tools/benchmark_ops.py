"""Benchmark the compiled window ops against the unfold reference, measured in one run.

For each op and shape it prints forward time, backward time (gradients of every input)
and peak extra memory of forward+backward for the compiled op and for the pure-PyTorch
unfold reference, then their ratios. On CUDA it also prints the achieved bandwidth as a
fraction of a device-to-device copy timed in the same run.

CPU memory is the rise of the process's peak resident set (VmHWM) above the inputs, each
measurement in a fresh process; CUDA memory is torch.cuda.max_memory_allocated above the
inputs. On CPU, shapes whose reference would not fit --reference-budget-gb are scaled
down (batch first, then spatial size), and the table says so.

    python tools/benchmark_ops.py                   # CPU, and CUDA when available
    python tools/benchmark_ops.py --device cpu --quick
"""
import argparse
import multiprocessing
import os
import statistics
import time

import torch

from featup_mmseg.ops import (adaptive_conv, adaptive_conv_reference, ext_available,
                              window_correlation, window_correlation_reference)

# (B, C, H, W, k) of the issue; window_correlation runs with D = 32 keys at the same sizes.
SHAPES = [(2, 256, 128, 128, 7), (1, 384, 224, 224, 7), (16, 2048, 32, 32, 5),
          (64, 16, 64, 64, 7)]
QUICK_SHAPES = [(2, 64, 64, 64, 7)]
KEY_DIM = 32

IMPLS = {
    'adaptive_conv': {'compiled': adaptive_conv, 'reference': adaptive_conv_reference},
    'window_correlation': {
        'compiled': window_correlation,
        'reference': window_correlation_reference
    },
}


def op_shape(op, shape):
    batch, channels, height, width, k = shape
    return (batch, KEY_DIM if op == 'window_correlation' else channels, height, width, k)


def make_inputs(op, shape, device, dtype=torch.float32):
    """Inputs (requiring grad), extra positional args and the output gradient."""
    batch, channels, height, width, k = shape
    gen = torch.Generator().manual_seed(0)

    def rand(*size):
        return torch.randn(*size, generator=gen, dtype=dtype).to(device).requires_grad_()

    if op == 'adaptive_conv':
        inputs = [rand(batch, channels, height, width), rand(batch, k * k, height, width)]
        return inputs, (), rand(batch, channels, height, width).detach()
    return [rand(batch, channels, height, width)], (k, ), rand(batch, k * k, height,
                                                              width).detach()


def reference_bytes(op, shape):
    """Rough peak of the unfold reference: patches, their product, and the backward."""
    batch, channels, height, width, k = shape
    return 3 * batch * channels * k * k * height * width * 4


def scale_to_budget(op, shape, budget_bytes):
    batch, channels, height, width, k = shape
    while reference_bytes(op, (batch, channels, height, width, k)) > budget_bytes:
        if batch > 1:
            batch //= 2
        else:
            height, width = height // 2, width // 2
    return (batch, channels, height, width, k)


# ----------------------------------------------------------------------------------------
# measurement

def _proc_status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def _synchronize(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def _time_ms(device, fn, setup=None):
    """Wall time of fn() in ms; setup() runs untimed before it and feeds it."""
    arg = setup() if setup else None
    _synchronize(device)
    start = time.perf_counter()
    fn(arg) if setup else fn()
    _synchronize(device)
    return (time.perf_counter() - start) * 1e3


def measure(op, impl, shape, device, repeats):
    """Forward ms, backward ms and peak extra MiB of one implementation."""
    fn = IMPLS[op][impl]
    inputs, args, grad_out = make_inputs(op, shape, device)

    def forward():
        return fn(*inputs, *args)

    def backward(out):
        torch.autograd.grad(out, inputs, grad_out)

    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        backward(forward())
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        # Warm up thread pools and lazy initialisation on a tiny input, which leaves no
        # sizeable memory cached in the heap.
        tiny_inputs, tiny_args, tiny_grad = make_inputs(op, (1, 1, 8, 8, shape[-1]), device)
        torch.autograd.grad(fn(*tiny_inputs, *tiny_args), tiny_inputs, tiny_grad)
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset the peak resident set to the current one
        base = _proc_status_kib('VmRSS')
        backward(forward())
        peak_mib = (_proc_status_kib('VmHWM') - base) / 1024

    warmup = 3 if device == 'cuda' else 0  # the memory run above warmed up the CPU path
    for _ in range(warmup):
        backward(forward())
    fwd = statistics.median(_time_ms(device, forward) for _ in range(repeats))
    bwd = statistics.median(_time_ms(device, backward, setup=forward) for _ in range(repeats))
    return {'fwd_ms': fwd, 'bwd_ms': bwd, 'peak_mib': peak_mib}


def measure_in_fresh_process(*args):
    # A fresh process per CPU measurement: its peak resident set then reflects only
    # this measurement, not memory an earlier one left cached in the heap.
    ctx = multiprocessing.get_context('spawn')
    with ctx.Pool(1) as pool:
        return pool.apply(measure, args)


def copy_gbps(device, numel):
    """Bandwidth of a device-to-device copy, counting bytes read and written."""
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ms = statistics.median(_time_ms(device, lambda: dst.copy_(src)) for _ in range(20))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def traffic_bytes(op, shape):
    """Minimal forward and backward traffic: every operand read or written once."""
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

def run_device(device, shapes, repeats, budget_bytes):
    print(f'\n== {device}: {torch.cuda.get_device_name() if device == "cuda" else "CPU"}, '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads, compiled ops: '
          f'{ext_available(device)}, float32, times are medians of {repeats} ==')
    header = (f'{"op":<19}{"shape (B,C,H,W,k)":<24}{"impl":<10}{"fwd ms":>10}{"bwd ms":>10}'
              f'{"peak MiB":>11}')
    if device == 'cuda':
        header += f'{"fwd GB/s":>10}{"bwd GB/s":>10}'
    print(header)
    copy = None
    for op in IMPLS:
        for requested in shapes:
            shape = op_shape(op, requested)
            if device == 'cpu':
                shape = scale_to_budget(op, shape, budget_bytes)
            results = {}
            for impl in ('compiled', 'reference'):
                if device == 'cpu':
                    results[impl] = measure_in_fresh_process(op, impl, shape, device, repeats)
                else:
                    results[impl] = measure(op, impl, shape, device, repeats)
                    torch.cuda.empty_cache()
                row = results[impl]
                line = (f'{op:<19}{str(shape):<24}{impl:<10}{row["fwd_ms"]:>10.2f}'
                        f'{row["bwd_ms"]:>10.2f}{row["peak_mib"]:>11.1f}')
                if device == 'cuda':
                    fwd_bytes, bwd_bytes = traffic_bytes(op, shape)
                    line += (f'{fwd_bytes / row["fwd_ms"] / 1e6:>10.0f}'
                             f'{bwd_bytes / row["bwd_ms"] / 1e6:>10.0f}')
                print(line, flush=True)
            ours, ref = results['compiled'], results['reference']
            note = '' if shape == op_shape(op, requested) else \
                f'  (scaled down from {op_shape(op, requested)}: reference too large)'
            print(f'{"":<19}{"":<24}{"ratio":<10}'
                  f'{ref["fwd_ms"] / ours["fwd_ms"]:>9.1f}x{ref["bwd_ms"] / ours["bwd_ms"]:>9.1f}x'
                  f'{ours["peak_mib"] / max(ref["peak_mib"], 1e-9):>10.3f}x'
                  f'   (speed-up of compiled; its memory as a fraction of reference){note}')
            if device == 'cuda':
                copy = copy or copy_gbps(device, 256 * 2**20)
                fwd_bytes, bwd_bytes = traffic_bytes(op, shape)
                print(f'{"":<53}compiled reaches '
                      f'{fwd_bytes / ours["fwd_ms"] / 1e6 / copy:.0%} (fwd) and '
                      f'{bwd_bytes / ours["bwd_ms"] / 1e6 / copy:.0%} (bwd) of a '
                      f'device-to-device copy ({copy:.0f} GB/s)')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=['cpu', 'cuda', 'all'], default='all')
    parser.add_argument('--quick', action='store_true',
                        help=f'one small shape {QUICK_SHAPES[0]} instead of the full set')
    parser.add_argument('--shapes', type=str, default=None,
                        help='semicolon-separated B,C,H,W,k tuples, e.g. "2,16,32,32,7"')
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed repeats (default 3 on CPU, 20 on CUDA)')
    parser.add_argument('--reference-budget-gb', type=float, default=12.0,
                        help='CPU: scale shapes down until the reference needs less')
    args = parser.parse_args()

    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(',')) for s in args.shapes.split(';')]
    devices = ['cpu', 'cuda'] if args.device == 'all' else [args.device]
    if 'cuda' in devices and not torch.cuda.is_available():
        if args.device == 'cuda':
            parser.error('no CUDA device is available')
        devices.remove('cuda')
    for device in devices:
        repeats = args.repeats or (20 if device == 'cuda' else 3)
        run_device(device, shapes, repeats, args.reference_budget_gb * 2**30)


if __name__ == '__main__':
    main()
