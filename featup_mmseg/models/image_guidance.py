"""Which necks receive the input image, the build-time check that someone passes it, and
the backbone level such a neck upsamples.

mmseg's EncoderDecoder calls ``neck(features)``; an image-guided neck also needs the
normalised input image, which only :class:`GuidedEncoderDecoder` passes. Such a neck
sets ``requires_image = True`` and calls :func:`check_built_by_guided_segmentor` in its
constructor, so that a config pairing it with a plain EncoderDecoder fails when the
model is built rather than at the first forward pass.
"""
import contextlib
import contextvars
from typing import Sequence

from torch import Tensor

_building_guided_segmentor = contextvars.ContextVar('featup_mmseg_building_guided_segmentor',
                                                    default=False)


@contextlib.contextmanager
def guided_segmentor_build():
    """Marks the construction of a segmentor that passes images to guided necks."""
    token = _building_guided_segmentor.set(True)
    try:
        yield
    finally:
        _building_guided_segmentor.reset(token)


def check_built_by_guided_segmentor(neck_name: str) -> None:
    if not _building_guided_segmentor.get():
        raise ValueError(
            f"{neck_name} upsamples with the input image as guidance, which only "
            "GuidedEncoderDecoder passes to necks: set model.type='GuidedEncoderDecoder' "
            '(a plain EncoderDecoder would call the neck without the image)')


def backbone_level(owner: str, inputs: Sequence[Tensor], in_index: int,
                   in_channels: int) -> Tensor:
    """The backbone output ``in_index`` that an image-guided neck upsamples, checked to
    exist and to have ``in_channels``.

    Raises:
        ValueError: naming the index or the channel count to set.
    """
    try:
        features = inputs[in_index]
    except IndexError:
        raise ValueError(f'{owner}: in_index {in_index} is out of range for a backbone with '
                         f'{len(inputs)} outputs') from None
    if features.shape[1] != in_channels:
        raise ValueError(
            f'{owner}: backbone output {in_index} has {features.shape[1]} channels but '
            f'in_channels={in_channels}; set neck.in_channels={features.shape[1]}')
    return features
