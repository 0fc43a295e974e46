"""The smallest input images a model's guided stages work on, for errors that name it.

A JBU stage needs its guidance larger than its radius in both dimensions; whether a model's
stages get that depends on the input image size through the backbone's strides. mmseg's
backbones pad their strided convolutions and patch embeddings, so a level of stride s of
an S-pixel input has ceil(S / s) pixels: the stride follows from an image and its level,
and from it the smallest image size that works.
"""
import math
from typing import Callable, Optional, Sequence, Tuple

# Image sides searched for the smallest that works (where no closed form is used).
MAX_IMAGE_SIDE = 1 << 14


def level_stride(image_size: Sequence[int], level_size: Sequence[int]) -> int:
    """The stride of a backbone level of ``level_size`` for an input of ``image_size``.

    Any stride s with ceil(S / s) = n in both dimensions fits; of those, a power of two
    (mmseg's backbones: 4, 8, 16, 32) if there is one, else the smallest integer.
    """
    low = max(image / level for image, level in zip(image_size, level_size))
    high = min(image / (level - 1) if level > 1 else math.inf
               for image, level in zip(image_size, level_size))
    power = 2**math.ceil(math.log2(max(low, 1.0)))
    return power if power < high else math.ceil(low)


def min_image_side_for_level(stride: int, min_level_side: int) -> int:
    """The smallest image side S with ceil(S / stride) >= min_level_side."""
    return (min_level_side - 1) * stride + 1


def smallest_image_side(fits: Callable[[int], bool]) -> Optional[int]:
    """The smallest image side up to ``MAX_IMAGE_SIDE`` for which ``fits``, or None."""
    return next((side for side in range(1, MAX_IMAGE_SIDE + 1) if fits(side)), None)


def check_guide_sizes(owner: str, stages: str, guides: Sequence[Tuple[str, Tuple[int, int],
                                                                        int]],
                      image_size: Optional[Sequence[int]] = None) -> None:
    """Refuses guiding maps smaller than their stages need.

    ``guides`` lists (name, (h, w), smallest side its stages need) for each map that guides
    a stage. With ``image_size`` (the input images' (H, W)) the error names the smallest
    image size that works, else the map that is too small.
    """
    small = [(name, size, side) for name, size, side in guides if min(size) < side]
    if not small:
        return
    if image_size is None:
        name, size, side = small[0]
        raise ValueError(
            f'{owner} with {stages} needs each guiding level at least {side} x {side}, got '
            f'{size} at {name}: the input images are too small; resize or pad them')
    height, width = (int(n) for n in image_size[:2])
    minimum = max(
        min_image_side_for_level(level_stride((height, width), size), side)
        for _, size, side in guides)
    raise ValueError(
        f'{owner} with {stages} needs input images of at least {minimum} x {minimum} px, got '
        f'{height} x {width}; resize or pad the inputs, or with slide inference use a '
        f'crop_size of at least {minimum} x {minimum}')
