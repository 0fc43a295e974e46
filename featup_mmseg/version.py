__version__ = '0.2.0'

# The oldest torch the package supports (setup.py's install_requires says the same).
MIN_TORCH_VERSION = (2, 1)


def check_torch_version(version: str) -> None:
    """Raises ImportError with what to do if ``version`` (torch.__version__) is too old."""
    release = tuple(int(part) for part in version.split('+')[0].split('.')[:2])
    if release < MIN_TORCH_VERSION:
        raise ImportError(
            f'featup_mmseg needs torch >= {".".join(map(str, MIN_TORCH_VERSION))}, found '
            f'torch {version}. Install a newer torch (matching your mmcv build), e.g. torch '
            '2.1.2 for mmcv 2.1.0, then rebuild: pip install --no-build-isolation .')
