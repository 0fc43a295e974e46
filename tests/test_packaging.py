"""Installing into an existing environment: the torch range, Python 3.8 code, build targets."""
import json
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch

from featup_mmseg.version import MIN_TORCH_VERSION, check_torch_version
from helpers import ROOT

EXTENSION = next((ROOT / 'featup_mmseg').glob('_ext*.so'), None)


def test_install_leaves_torch_alone(tmp_path):
    # What `pip install --no-build-isolation .` would install, dependencies included: the
    # package alone, never a torch upgrade under the user's compiled mmcv.
    report = tmp_path / 'report.json'
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index', '--quiet',
         '--no-build-isolation', '--report', str(report), str(ROOT)],
        capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = {item['metadata']['name'] for item in json.loads(report.read_text())['install']}
    assert planned == {'featup_mmseg'} or planned == {'featup-mmseg'}, planned


def test_setup_declares_the_supported_torch_range_and_no_mmcv():
    setup = (ROOT / 'setup.py').read_text()
    minimum = '.'.join(map(str, MIN_TORCH_VERSION))
    assert f"'torch>={minimum}'," in setup and 'install_requires=RUNTIME_REQUIREMENTS' in setup
    assert "python_requires='>=3.8'" in setup
    assert "'mmcv" not in setup  # pip would build it from source


@pytest.mark.parametrize('version', ['2.0.1', '1.13.1+cu117', '2.0.0a0+git1234'])
def test_too_old_torch_is_named_at_import(version):
    with pytest.raises(ImportError, match=rf'needs torch >= 2\.1, found torch {re.escape(version)}'):
        check_torch_version(version)


@pytest.mark.parametrize('version', ['2.1.2+cu121', '2.13.0', '2.15.0.dev20261101', '3.0.0'])
def test_supported_torch_imports(version):
    check_torch_version(version)


def test_package_checks_torch_on_import():
    script = ('import torch; torch.__version__ = "2.0.1"\n'
              'try:\n    import featup_mmseg\nexcept ImportError as err:\n    print(err)\n')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert 'featup_mmseg needs torch >= 2.1, found torch 2.0.1' in result.stdout, result.stderr


def test_code_runs_on_python_38():
    pytest.importorskip('vermin')
    result = subprocess.run([sys.executable, '-c', 'import sys, vermin; sys.exit(vermin.main())', '-t=3.8-', '--no-tips', '--violations', '--eval-annotations',
                             'featup_mmseg', 'tools', 'setup.py'],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _built_with_gcc_12_or_newer(path) -> bool:
    comment = subprocess.run(['readelf', '-p', '.comment', str(path)], capture_output=True,
                             text=True).stdout
    versions = [int(v) for v in re.findall(r'GCC: \([^)]*\) (\d+)\.', comment)]
    return bool(versions) and min(versions) >= 12


@pytest.mark.skipif(platform.machine() != 'x86_64' or shutil.which('nm') is None
                    or shutil.which('readelf') is None, reason='x86-64 binutils check')
def test_cpu_kernels_have_an_fma_clone():
    # AVX2 does not imply FMA: the clone for AVX2 machines is built for x86-64-v3 (AVX2 + FMA).
    if not _built_with_gcc_12_or_newer(EXTENSION):
        pytest.skip('GCC < 12 has no x86-64 level clones (AVX2 clone without FMA)')
    symbols = subprocess.run(['nm', str(EXTENSION)], capture_output=True, text=True).stdout
    assert 'arch_x86_64_v3' in symbols and 'arch_x86_64_v4' in symbols


def test_cuda_kernels_cover_volta_to_hopper():
    from featup_mmseg.ops.window_ops import _HAS_CUDA_KERNELS
    if not _HAS_CUDA_KERNELS:
        pytest.skip('extension built without CUDA kernels')
    if torch.cuda.is_available() or os.environ.get('TORCH_CUDA_ARCH_LIST'):
        pytest.skip('built for the visible GPU or a chosen list, not the default one')
    binary = EXTENSION.read_bytes()
    lowest = b'sm_75' if int(torch.version.cuda.split('.')[0]) >= 13 else b'sm_70'
    for arch in (lowest, b'sm_80', b'sm_86', b'sm_90'):
        assert arch in binary, arch
