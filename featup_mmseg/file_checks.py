"""The tools' input and output files: checked before the expensive part, outputs verified
when written.

A tool that fits, trains or exports for minutes or hours must neither find out at the end
that an input is missing or its output cannot be written, nor report a file it did not
write (``cv2.imwrite`` returns False instead of raising). Errors are ``OSError`` exceptions that name
the option, the path and the reason.
"""
import errno
import os
import tempfile
from pathlib import Path
from typing import Union

PathLike = Union[str, os.PathLike]


def check_input_file(path: PathLike, option: str) -> PathLike:
    """``path``, if it is an existing, readable file or a URL (left to its loader)."""
    if '://' in str(path):
        return path
    path = Path(path)
    if not path.is_file():
        raise OSError(f'{option} {path}: ' + os.strerror(errno.EISDIR if path.is_dir() else
                                                          errno.ENOENT))
    if not os.access(path, os.R_OK):
        raise OSError(f'{option} {path}: {os.strerror(errno.EACCES)}')
    return path


def check_output_dir(path: PathLike, option: str = '--out') -> Path:
    """``path`` as a directory the tool can write into, created if missing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OSError(f'{option} {path} exists and is not a directory')
    try:
        path.mkdir(parents=True, exist_ok=True)
        # a real write: permissions, read-only mounts and quotas all show here
        with tempfile.NamedTemporaryFile(dir=path, prefix='.write-check-'):
            pass
    except OSError as err:
        raise OSError(f'{option}: cannot write into {path}: {err.strerror or err}') from None
    return path


def check_output_file(path: PathLike, option: str = '--out', image: bool = False) -> Path:
    """``path`` as a file the tool can write (its folder created if missing); with
    ``image``, one whose extension OpenCV can encode."""
    path = Path(path)
    if path.is_dir():
        raise OSError(f'{option} {path} is a directory; give a file name')
    if image:
        import cv2
        if not path.suffix or not cv2.haveImageWriter(str(path)):
            raise OSError(f'{option} {path}: OpenCV cannot write images of this extension; '
                          'use .png or .jpg')
    check_output_dir(path.parent, option)
    if path.exists() and not os.access(path, os.W_OK):
        raise OSError(f'{option}: cannot overwrite {path}: permission denied')
    return path


def write_image(path: PathLike, image) -> None:
    """Writes a (H, W, 3) BGR uint8 image, encoded by OpenCV for the path's extension, or
    raises: encoded in memory and written by Python, whose writes report a full device
    (``cv2.imwrite`` returns True even then)."""
    import cv2
    path = Path(path)
    encoded, data = cv2.imencode(path.suffix, image) if path.suffix else (False, None)
    if not encoded:
        raise OSError(f'could not encode the image for {path}: OpenCV cannot write images of '
                      'this extension; use .png or .jpg')
    try:
        with open(path, 'wb') as f:
            f.write(data.tobytes())
    except OSError as err:
        raise OSError(f'could not write the image {path}: {err.strerror or err}') from None


def one_line(err: Exception) -> str:
    """The error's message in one line: sentences joined by semicolons, the keys listed
    under them (indented lines) by commas."""
    parts = []
    for line in str(err).splitlines():
        if line.startswith('  ') and parts:
            parts[-1] += (' ' if parts[-1].endswith(':') else ', ') + line.strip()
        elif line.strip():
            parts.append(line.strip().rstrip('.'))
    return '; '.join(parts) or type(err).__name__
