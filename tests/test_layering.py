"""The torch-only layers import and run without mmcv, mmengine or mmseg installed."""
import subprocess
import sys

SCRIPT = r'''
import sys
for name in ('mmcv', 'mmengine', 'mmseg'):
    sys.modules[name] = None  # any import of them now raises ImportError
import torch
from featup_mmseg.layers import JBUStack
from featup_mmseg.ops import ext_available
assert ext_available()
out = JBUStack(8).eval()(torch.randn(1, 8, 4, 4), torch.randn(1, 3, 64, 64))
assert out.shape == (1, 8, 64, 64)
print('torch-only ok')
'''


def test_layers_import_without_openmmlab():
    result = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'torch-only ok' in result.stdout
