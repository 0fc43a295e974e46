"""The benchmark script runs end to end and reports both implementations with ratios."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_ops_reports_ratios():
    result = subprocess.run([
        sys.executable, str(ROOT / 'tools' / 'benchmark_ops.py'), '--device', 'cpu',
        '--shapes', '1,4,16,16,3', '--repeats', '1'
    ], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'compiled ops: True' in out
    for op, channels in (('adaptive_conv', 4), ('window_correlation', 32)):
        for impl in ('compiled', 'reference'):
            assert re.search(rf'{op}\s+\(1, {channels}, 16, 16, 3\)\s+{impl}\s+[\d.]+\s+[\d.]+'
                             r'\s+[\d.]+', out), out
    assert len(re.findall(r'ratio\s+[\d.]+x\s+[\d.]+x\s+[\d.]+x', out)) == 2, out
