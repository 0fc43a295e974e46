"""The gloo process group that prepare_cpu_distributed starts is gone, its threads joined,
before the interpreter finalizes (a gloo thread that outlives that can abort the rank)."""
import os
import socket
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

# One rank: the threads it has before starting gloo and, after every other exit handler has
# run (this one is registered first), the threads it has left.
RANK = r'''
import atexit, os
import torch
from mmengine.config import Config
from featup_mmseg.engine import prepare_cpu_distributed

def threads():
    return sorted(open(f'/proc/self/task/{t}/comm').read().strip()
                  for t in os.listdir('/proc/self/task'))

before = threads()
atexit.register(lambda: print('threads at exit:', threads()))
prepare_cpu_distributed(Config(dict(launcher='pytorch')))

class Runner:  # holds the model in a reference cycle, as mmengine's runner does
    def __init__(self, model):
        self.model, self.loop = model, self

def main():
    runner = Runner(torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2)))
    runner.model(torch.randn(3, 4)).sum().backward()
    print('threads before gloo:', before)
    print('threads while training:', threads())

main()
'''


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/task')
@pytest.mark.skipif(not torch.distributed.is_available(), reason='no torch.distributed')
def test_gloo_threads_are_joined_before_interpreter_exit():
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': '',
           'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(_free_port()), 'RANK': '0',
           'LOCAL_RANK': '0', 'WORLD_SIZE': '1'}
    result = subprocess.run([sys.executable, '-c', RANK], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(': ', 1) for line in result.stdout.splitlines() if ': ' in line)
    before, training, at_exit = (lines[f'threads {when}'] for when in
                                 ('before gloo', 'while training', 'at exit'))
    assert training != before  # gloo's work threads ran
    assert at_exit == before, f'threads left at exit: {at_exit} (before gloo: {before})'
