"""Which code path a tensor's device takes: the CPU's or an accelerator's.

Several layers compute the same numbers two ways, chosen by device: on CPU where memory
traffic and oneDNN's layout conversions dominate (batched matrix products instead of 1x1
convolutions, a JBU stage that recomputes its kernel in the backward, one batch element
per resize chunk, views gathered line by line), on accelerators where kernel launches do
(cuDNN convolutions, stored kernels, few large chunks). :func:`accelerator_paths` makes CPU
tensors take the accelerators' paths, so that what a GPU runs can be counted (ops
dispatched, tools/benchmark_jbu_head.py ``--count-ops``) and checked against the CPU path
on a machine without one. The compiled ops still run their CPU kernels: one call per op
on either device.
"""
import contextlib
import threading
from typing import Iterator

import torch

# Process-wide, not per thread: autograd runs backward passes in threads of its own.
_forced_depth = 0
_forced_lock = threading.Lock()


@contextlib.contextmanager
def accelerator_paths() -> Iterator[None]:
    """Inside the block, CPU tensors take the code paths of accelerators (the same
    numbers up to round-off)."""
    global _forced_depth
    with _forced_lock:
        _forced_depth += 1
    try:
        yield
    finally:
        with _forced_lock:
            _forced_depth -= 1


def takes_cpu_path(device: torch.device) -> bool:
    """Whether tensors on ``device`` take the CPU's code paths."""
    return device.type == 'cpu' and not _forced_depth
