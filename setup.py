"""Builds featup_mmseg and its compiled ops, featup_mmseg._ext.

Builds against the torch that is installed and never installs or upgrades torch (torch
2.1 and newer; see the installation guide). Install into an environment with torch, mmcv
and mmseg: ``pip install --no-build-isolation .`` (or ``-e .``). The configs, the tools
and the model index ship inside the package (featup_mmseg/.mim), for mim.

CPU kernels are always built. CUDA kernels are built when a CUDA toolkit and a CUDA-enabled
torch of the same CUDA major version are present; FORCE_CUDA=1 insists on them (failing
without a toolkit or on a version mismatch), FORCE_CUDA=0 skips them. Without a visible GPU,
TORCH_CUDA_ARCH_LIST defaults to Volta to Hopper plus PTX for newer GPUs: '7.0;7.5;8.0;8.6;
9.0+PTX' (CUDA 13 toolkits no longer compile for Volta: '7.5;8.0;8.6;9.0+PTX' there).
"""
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

DEFAULT_CUDA_ARCH_LIST = '7.0;7.5;8.0;8.6;9.0+PTX'
# CUDA 13 dropped sm_70 (Volta)
DEFAULT_CUDA_13_ARCH_LIST = '7.5;8.0;8.6;9.0+PTX'


def _toolkit_major(cuda_home) -> int:
    nvcc = os.path.join(cuda_home, 'bin', 'nvcc')
    output = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout
    match = re.search(r'release (\d+)\.', output)
    if match is None:
        raise RuntimeError(f'could not read the CUDA version from `{nvcc} --version`')
    return int(match.group(1))


def _with_cuda(torch, cuda_home) -> bool:
    force = os.environ.get('FORCE_CUDA')
    if force == '1':
        if cuda_home is None:
            raise RuntimeError('FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME')
        return True
    if force == '0' or cuda_home is None or torch.version.cuda is None:
        return False
    toolkit, built_with = _toolkit_major(cuda_home), int(torch.version.cuda.split('.')[0])
    if toolkit != built_with:
        print(f'featup_mmseg: building CPU kernels only: the CUDA toolkit at {cuda_home} is '
              f'CUDA {toolkit}, torch was built with CUDA {torch.version.cuda} (a toolkit of '
              'the same major version is needed; FORCE_CUDA=1 to try anyway)')
        return False
    return True


# What mim (``mim train featup_mmseg CONFIG``) and mmengine's hub look for in
# featup_mmseg/.mim: the configs, the tools and the model index.
MIM_FILES = ('configs', 'tools', 'model-index.yml')
RUNTIME_REQUIREMENTS = [
    'torch>=2.1',  # never forces a torch upgrade under a compiled mmcv
    'mmengine>=0.7.1,<1.0.0',
    'mmsegmentation>=1.0.0,<2.0.0',
    'ftfy',  # mmseg imports these at import time without declaring them
    'regex',
]


def add_mim_extension():
    """Puts MIM_FILES into featup_mmseg/.mim: symlinks for an editable install (edits show
    at once), copies when a wheel or an sdist is built (they ship in the package)."""
    if 'develop' in sys.argv or 'editable_wheel' in sys.argv:
        mode = 'symlink'
    elif {'sdist', 'bdist_wheel', 'build', 'build_py', 'install'} & set(sys.argv):
        mode = 'copy'
    else:
        return
    root = os.path.dirname(os.path.abspath(__file__))
    mim_path = os.path.join(root, 'featup_mmseg', '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for name in MIM_FILES:
        source, target = os.path.join(root, name), os.path.join(mim_path, name)
        if not os.path.exists(source):
            continue
        if os.path.islink(target) or os.path.isfile(target):
            os.remove(target)
        elif os.path.isdir(target):
            shutil.rmtree(target)
        if mode == 'symlink':
            os.symlink(os.path.relpath(source, mim_path), target)
        elif os.path.isdir(source):
            shutil.copytree(source, target,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(source, target)


def make_extension():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    sources = ['csrc/bindings.cpp', 'csrc/window_ops.cpp', 'csrc/cpu/window_ops_cpu.cpp',
               'csrc/neighbourhood_attention.cpp', 'csrc/cpu/neighbourhood_attention_cpu.cpp',
               'csrc/bicubic_resize.cpp', 'csrc/cpu/bicubic_resize_cpu.cpp',
               'csrc/dropout_ops.cpp', 'csrc/cpu/dropout_ops_cpu.cpp',
               'csrc/range_kernel.cpp', 'csrc/cpu/range_kernel_cpu.cpp']
    # -fopenmp: at::parallel_for only runs in parallel when the caller is built with OpenMP.
    extra_compile_args = {'cxx': ['-O3', '-fopenmp']}
    kwargs = dict(extra_link_args=['-fopenmp'], include_dirs=[os.path.abspath('csrc')])
    if not _with_cuda(torch, CUDA_HOME):
        return CppExtension('featup_mmseg._ext', sources,
                            extra_compile_args=extra_compile_args, **kwargs)
    if not os.environ.get('TORCH_CUDA_ARCH_LIST') and not torch.cuda.is_available():
        os.environ['TORCH_CUDA_ARCH_LIST'] = (DEFAULT_CUDA_13_ARCH_LIST
                                              if _toolkit_major(CUDA_HOME) >= 13
                                              else DEFAULT_CUDA_ARCH_LIST)
    extra_compile_args['nvcc'] = ['-O3', '-lineinfo']
    cuda_sources = ['csrc/cuda/window_ops_cuda.cu', 'csrc/cuda/neighbourhood_attention_cuda.cu',
                    'csrc/cuda/bicubic_resize_cuda.cu', 'csrc/cuda/range_kernel_cuda.cu']
    return CUDAExtension('featup_mmseg._ext', sources + cuda_sources,
                         define_macros=[('WITH_CUDA', None)],
                         extra_compile_args=extra_compile_args, **kwargs)


def main():
    from torch.utils.cpp_extension import BuildExtension

    version = {}
    with open(os.path.join('featup_mmseg', 'version.py')) as f:
        exec(f.read(), version)
    add_mim_extension()
    setup(
        name='featup_mmseg',
        version=version['__version__'],
        description="FeatUp's joint bilateral upsampler for mmsegmentation 1.x",
        long_description=open('README.md').read() if os.path.exists('README.md') else '',
        long_description_content_type='text/markdown',
        license='Apache License 2.0',
        packages=find_packages(include=['featup_mmseg', 'featup_mmseg.*']),
        package_data={'featup_mmseg': ['.mim/model-index.yml', '.mim/configs/**/*',
                                       '.mim/tools/**/*']},
        python_requires='>=3.8',
        # mmcv is not declared: pip would build it from source; see the installation guide
        install_requires=RUNTIME_REQUIREMENTS,
        ext_modules=[make_extension()],
        cmdclass={'build_ext': BuildExtension},
        zip_safe=False,
    )


if __name__ == '__main__':
    main()
