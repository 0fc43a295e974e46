"""The sdist and the wheel that `make package` builds (dist/), and the sdist installed, as a
user installs it, into a scratch environment that has torch, mmcv and mmseg (this one's,
added behind the scratch venv's own packages), used from outside the source tree, and
through mim."""
import os
import site
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
from helpers import ROOT

from featup_mmseg.version import __version__

DIST = ROOT / 'dist'
SDIST = DIST / f'featup_mmseg-{__version__}.tar.gz'
WHEELS = sorted(DIST.glob(f'featup_mmseg-{__version__}-*.whl'))
DEMO = 'segformer_mit-b0_featup-jbu_synthetic-128x128.py'

pytestmark = pytest.mark.skipif(
    not SDIST.exists() or not WHEELS, reason='dist/ not built: `make package` (run by `make '
    'test`) builds the sdist and the wheel')


def test_sdist_carries_what_a_build_needs():
    with tarfile.open(SDIST) as sdist:
        names = {name.split('/', 1)[1] for name in sdist.getnames() if '/' in name}
    for name in ('setup.py', 'LICENSE', 'CITATION.cff', 'CHANGELOG.md', 'README.md',
                 'model-index.yml', 'MANIFEST.in', 'requirements/mmcv.txt'):
        assert name in names, name
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / 'csrc').rglob('*') if p.is_file()}
    assert sources <= names, sources - names  # headers and CUDA sources included
    configs = {p.relative_to(ROOT).as_posix() for p in (ROOT / 'configs').rglob('*')
               if p.is_file()}
    assert configs <= names and f'featup_mmseg/.mim/configs/demo/{DEMO}' in names
    assert not any(name.endswith(('.so', '.pyc')) for name in names)


def test_wheel_ships_the_extension_configs_tools_and_model_index():
    with zipfile.ZipFile(WHEELS[0]) as wheel:
        names = set(wheel.namelist())
    assert any(n.startswith('featup_mmseg/_ext') and n.endswith('.so') for n in names)
    mim = {n[len('featup_mmseg/.mim/'):] for n in names if n.startswith('featup_mmseg/.mim/')}
    configs = {p.relative_to(ROOT).as_posix() for p in (ROOT / 'configs').rglob('*')
               if p.is_file()}
    assert configs <= mim and 'model-index.yml' in mim and 'tools/train.py' in mim
    assert not any('__pycache__' in n for n in names)


CHECK_INSTALLED = r'''
import os, sys
import torch
import featup_mmseg, featup_mmseg.plugin
from featup_mmseg.ops import adaptive_conv, ext_available
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
package = os.path.dirname(featup_mmseg.__file__)
assert package.startswith(sys.prefix), package       # the scratch install, not the checkout
assert ext_available() and featup_mmseg.__version__ == sys.argv[1]
out = adaptive_conv(torch.randn(1, 2, 5, 5), torch.softmax(torch.randn(1, 9, 5, 5), 1))
assert out.shape == (1, 2, 5, 5)
# a config shipped in the package: inherited by a user's config, and through the model index
with open('user_config.py', 'w') as f:
    f.write("_base_ = ['featup_mmseg::demo/" + sys.argv[2] + "']\n")
cfg = Config.fromfile('user_config.py')
init_default_scope('mmseg')
assert type(MODELS.build(cfg.model)).__name__ == 'EncoderDecoder'
assert get_config('featup_mmseg::demo/' + sys.argv[2]).model.decode_head.type == \
    'FeatUpSegformerHead'
print('installed ok', package)
'''


@pytest.fixture(scope='module')
def scratch(tmp_path_factory):
    """A venv over this one's packages (torch, mmcv, mmseg, mim, pip and setuptools, after
    its own on sys.path; a venv made by a venv's python would see the base interpreter's
    instead) with the sdist installed into it, built against that torch (CPU kernels).
    The packages' folder is added as a path, its .pth files not run: they would install
    this environment's editable featup_mmseg as an import hook."""
    root = tmp_path_factory.mktemp('scratch')
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(root / 'venv')],
                   check=True)
    python = root / 'venv' / 'bin' / 'python'
    own = subprocess.run([str(python), '-c', 'import site; print(site.getsitepackages()[0])'],
                         capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(own, 'base_environment.pth'), 'w') as f:
        f.write(site.getsitepackages()[0] + '\n')
    # --no-index: the declared requirements must be met by the environment (never a torch
    # or mmcv from the registry); --no-build-isolation: built against the installed torch
    result = subprocess.run(
        [str(python), '-m', 'pip', 'install', '--no-index', '--no-build-isolation', str(SDIST)],
        capture_output=True, text=True, cwd=root, env={**os.environ, 'FORCE_CUDA': '0'},
        timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, python


def test_installed_sdist_runs_its_ops_and_ships_its_configs(scratch):
    root, python = scratch
    result = subprocess.run([str(python), '-c', CHECK_INSTALLED, __version__, DEMO],
                            capture_output=True, text=True, cwd=root, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'installed ok' in result.stdout


def test_mim_trains_and_tests_from_the_installed_package(scratch):
    pytest.importorskip('mim')
    root, python = scratch
    from featup_mmseg.datasets import generate_synthetic_shapes
    data = generate_synthetic_shapes(root / 'data', num_train=4, num_val=2)
    options = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2',
               'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2']
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={data}', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False']
    # mim runs featup_mmseg/.mim/tools/{train,test}.py of the installed package, this python
    mim = [str(python), '-c', 'import sys; from mim.cli import cli; sys.exit(cli())']
    result = subprocess.run(
        [*mim, 'train', 'featup_mmseg', DEMO, '--work-dir', str(root / 'run'), '-y',
         '--cfg-options', *options], capture_output=True, text=True, cwd=root, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert os.path.join('featup_mmseg', '.mim', 'tools', 'train.py') in output
    assert (root / 'run' / 'iter_2.pth').exists()
    result = subprocess.run(
        [*mim, 'test', 'featup_mmseg', DEMO, '--checkpoint', str(root / 'run' / 'iter_2.pth'),
         '--work-dir', str(root / 'test'), '-y', '--cfg-options', *options],
        capture_output=True, text=True, cwd=root, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert os.path.join('featup_mmseg', '.mim', 'tools', 'test.py') in output
    assert 'mIoU' in output


def test_a_checkout_without_its_build_says_it_shadows_the_installed_package(scratch, tmp_path):
    """After a non-editable install, Python run from the source checkout imports the
    checkout's uncompiled package; it says so instead of running the slow reference ops."""
    _, python = scratch
    shutil.copytree(ROOT / 'featup_mmseg', tmp_path / 'featup_mmseg',
                    ignore=shutil.ignore_patterns('*.so', '__pycache__', '.mim'))
    result = subprocess.run([str(python), '-c', 'import featup_mmseg.ops'],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert f"featup_mmseg was imported from {tmp_path / 'featup_mmseg'}, which has no compiled " \
        'featup_mmseg._ext, instead of the installed package at' in message
    assert 'Run from outside the source checkout' in message
