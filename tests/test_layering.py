"""The torch-only layers import and run without mmcv, mmengine or mmseg installed, and
change nothing of them when they are; the registration subpackages and the plugin."""
import subprocess
import sys

import pytest

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


SIDE_EFFECTS = r'''
import sys
import featup_mmseg, featup_mmseg.ops, featup_mmseg.layers
loaded = sorted(name for name in sys.modules
                if name.split('.')[0] in ('mmcv', 'mmengine', 'mmseg'))
assert not loaded, loaded
from mmengine.runner.checkpoint import CheckpointLoader, load_from_http, load_from_local
assert CheckpointLoader._schemes[''] is load_from_local
assert CheckpointLoader._schemes['https://'] is load_from_http
print('no side effects')
'''


def test_torch_only_imports_leave_openmmlab_alone():
    """With mmseg installed, importing featup_mmseg and its torch-only parts neither imports
    mmcv/mmengine/mmseg nor changes mmengine's checkpoint loaders."""
    result = subprocess.run([sys.executable, '-c', SIDE_EFFECTS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'no side effects' in result.stdout


REGISTRATIONS = r'''
from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
import featup_mmseg.{package}
from mmseg.registry import {registry}
assert {registry}.get('{name}') is not None
assert CheckpointLoader._schemes[''] is load_from_local  # only featup_mmseg.plugin patches
print('registered')
'''


@pytest.mark.parametrize('package, registry, name', [
    ('models', 'MODELS', 'JBUNeck'), ('models', 'MODELS', 'JBUStage'),
    ('datasets', 'DATASETS', 'SyntheticShapesDataset'),
    ('engine', 'HOOKS', 'FeatUpPretrainHook'),
])
def test_registration_subpackages_register_when_imported_directly(package, registry, name):
    script = REGISTRATIONS.format(package=package, registry=registry, name=name)
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'registered' in result.stdout


def test_plugin_registers_everything_and_fixes_checkpoint_loading():
    script = r'''
from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
import featup_mmseg.plugin
from mmseg.registry import DATASETS, HOOKS, MODELS
for registry, name in ((MODELS, 'FeatUpSegformerHead'), (MODELS, 'GuidedEncoderDecoder'),
                       (DATASETS, 'SyntheticShapesDataset'), (HOOKS, 'FeatUpPretrainHook')):
    assert registry.get(name) is not None, name
from featup_mmseg.engine import torch_refuses_mmengine_checkpoints
# the fix applies where torch refuses mmengine's checkpoints (torch >= 2.6), only there
patched = CheckpointLoader._schemes[''] is not load_from_local
assert patched == torch_refuses_mmengine_checkpoints(), patched
print('plugin ok')
'''
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'plugin ok' in result.stdout
