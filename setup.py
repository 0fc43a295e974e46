"""Builds featup_mmseg and its compiled ops, featup_mmseg._ext.

CPU kernels are always built. CUDA kernels are built when a CUDA toolkit and a
CUDA-enabled torch are present; FORCE_CUDA=1 insists on them (failing without a
toolkit), FORCE_CUDA=0 skips them. Without a visible GPU, TORCH_CUDA_ARCH_LIST defaults
to '8.0;9.0+PTX' (Ampere, Hopper, and newer GPUs through PTX).

Install with ``pip install --no-build-isolation -e .`` into an environment with torch.
"""
import os

from setuptools import find_packages, setup

DEFAULT_CUDA_ARCH_LIST = '8.0;9.0+PTX'


def _with_cuda(torch, cuda_home) -> bool:
    force = os.environ.get('FORCE_CUDA')
    if force == '1':
        if cuda_home is None:
            raise RuntimeError('FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME')
        return True
    if force == '0':
        return False
    return cuda_home is not None and torch.version.cuda is not None


def make_extension():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    sources = ['csrc/bindings.cpp', 'csrc/window_ops.cpp', 'csrc/cpu/window_ops_cpu.cpp']
    # -fopenmp: at::parallel_for only runs in parallel when the caller is built with OpenMP.
    extra_compile_args = {'cxx': ['-O3', '-fopenmp']}
    kwargs = dict(extra_link_args=['-fopenmp'], include_dirs=[os.path.abspath('csrc')])
    if not _with_cuda(torch, CUDA_HOME):
        return CppExtension('featup_mmseg._ext', sources,
                            extra_compile_args=extra_compile_args, **kwargs)
    if not os.environ.get('TORCH_CUDA_ARCH_LIST') and not torch.cuda.is_available():
        os.environ['TORCH_CUDA_ARCH_LIST'] = DEFAULT_CUDA_ARCH_LIST
    extra_compile_args['nvcc'] = ['-O3', '-lineinfo']
    return CUDAExtension('featup_mmseg._ext', sources + ['csrc/cuda/window_ops_cuda.cu'],
                         define_macros=[('WITH_CUDA', None)],
                         extra_compile_args=extra_compile_args, **kwargs)


def main():
    from torch.utils.cpp_extension import BuildExtension

    version = {}
    with open(os.path.join('featup_mmseg', 'version.py')) as f:
        exec(f.read(), version)
    setup(
        name='featup_mmseg',
        version=version['__version__'],
        description="FeatUp's joint bilateral upsampler for mmsegmentation 1.x",
        long_description=open('README.md').read() if os.path.exists('README.md') else '',
        long_description_content_type='text/markdown',
        packages=find_packages(include=['featup_mmseg', 'featup_mmseg.*']),
        python_requires='>=3.9',
        install_requires=['torch>=2.4'],
        ext_modules=[make_extension()],
        cmdclass={'build_ext': BuildExtension},
        zip_safe=False,
    )


if __name__ == '__main__':
    main()
