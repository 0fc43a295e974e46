"""The benchmark scripts run end to end and report their measurements with ratios."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_ops_reports_ratios():
    result = subprocess.run([
        sys.executable, str(ROOT / 'tools' / 'benchmark_ops.py'), '--device', 'cpu',
        '--shapes', '1,8,64,64,3', '--repeats', '1'
    ], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'compiled ops: True' in out
    for op, channels in (('adaptive_conv', 8), ('window_correlation', 32)):
        for impl in ('compiled', 'reference'):
            assert re.search(rf'{op}\s+\(1, {channels}, 64, 64, 3\)\s+{impl}\s+[\d.]+\s+[\d.]+'
                             r'\s+[\d.]+', out), out
    # the memory ratio is '-' where the reference's peak is too small to resolve
    assert len(re.findall(r'ratio\s+[\d.]+x\s+[\d.]+x\s+([\d.]+x|-)\n', out)) == 2, out


def test_benchmark_jbu_head_reports_ratios():
    # jbu-before from a given built tree (this one): the default exports and builds the
    # default commit first, minutes the smoke test does not need
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'benchmark_jbu_head.py'),
                             '--quick', '--before-tree', str(ROOT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    every = ('bilinear', 'jbu-before', 'jbu')
    for case, impls in (('model', every), ('head', every), ('stack', ('jbu-before', 'jbu'))):
        for impl in impls:
            assert re.search(rf'{case}\s+{impl}(\s+[\d.]+){{3}}(\s+-?\d+){{4}}\n', out), out
        assert re.search(rf'{case}\s+speed-up over before\s+[\d.]+x', out), out
    assert len(re.findall(r'jbu / bilinear\s+[\d.]+x(\s+(-?[\d.]+x|-)){2}\s', out)) == 2, out
    assert f'jbu-before: {ROOT}' in out, out


def test_benchmark_pretraining_reports_ratios():
    # the baseline from a given built tree (this one): the default exports and builds the
    # default commit first, minutes the smoke test does not need
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'benchmark_pretraining.py'),
                             '--quick', '--baseline-tree', str(ROOT)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for case in ('step', 'implicit'):
        for tree in ('baseline', 'current'):
            assert re.search(rf'{case}\s+{tree}(\s+[\d.]+){{3}}(\s+-?\d+){{2}}\n', out), out
        assert re.search(rf'{case}\s+[\d.]+x\s+[\d.]+x\s+([\d.]+x|-)\s+([\d.]+x|-)\s+'
                         r'speed-up [\d.]+x', out), out
    assert f'baseline: {ROOT}' in out, out


def test_benchmark_upsamplers_reports_every_method():
    # One thread: the smoke test checks the tables, not speed, and a thread pool on a
    # busy 2-core machine waits on its descheduled threads.
    result = subprocess.run([
        sys.executable, str(ROOT / 'tools' / 'benchmark_upsamplers.py'), '--device', 'cpu',
        '--quick', '--source-size', '8', '--image-size', '64', '--repeats', '1',
        '--feature-size', '8', '--guidance-size', '64'
    ], capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'source (1, 256, 8, 8) -> (1, 256, 16, 16)' in out, out
    assert 'SegFormer-B1 training step at 64 x 64, batch 1' in out, out
    for ratio in (2, 8):
        assert f'at x{ratio}: features (1, 384, 8, 8) -> (1, 384, {8 * ratio}, {8 * ratio}), ' \
            'image 64 x 64' in out, out
    number, ratio = r'\s+[\d.]+\s+\|', r'\s+[\d.]+x\s+\|'
    for method in ('bilinear', 'JBUStage', 'ResizeConv', 'CARAFE', 'IndexNet', 'A2U', 'SAPA',
                   'FADE', 'DySample'):
        # upsamplers: fwd, fwd+bwd, peak, their ratios to bilinear and to JBU
        assert re.search(rf'^\| {method}\s+\|{number * 3}{ratio * 6}$', out, re.M), out
        # SegFormer: step, peak, their ratios to bilinear
        assert re.search(rf'^\| {method}\s+\|{number * 2}{ratio * 2}$', out, re.M), out
    for method in ('bilinear', 'FeatUp JBU', 'AnyUp', 'NAF'):
        # image-guided, at x2 and x8: fwd, fwd+bwd, peak, parameters, their ratios to JBU
        rows = re.findall(rf'^\| {method}\s+\|{number * 4}{ratio * 4}$', out, re.M)
        assert len(rows) == 2, out
