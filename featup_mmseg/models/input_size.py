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


def level_stride(image_size: Sequence[int], level_size: Sequence[int],
                 unpadded: bool = False) -> int:
    """The stride of a backbone level of ``level_size`` for an input of ``image_size``.

    Any stride s with ceil(S / s) = n in both dimensions fits (mmseg's backbones pad their
    strided layers); with ``unpadded``, also one with floor(S / s) = n (backbones that do
    not pad cover only floor(S / s) cells, e.g. timm's ConvNeXt and ViTs). Of those, a
    power of two (4, 8, 16, 32) if there is one, else the smallest integer.
    """
    pairs = list(zip(image_size, level_size))
    high = min(image / (level - 1) if level > 1 else math.inf for image, level in pairs)
    if unpadded:  # s > S / (n + 1)
        above = max(image / (level + 1) for image, level in pairs)
        low = math.floor(above) + 1
        power = 2**(math.floor(math.log2(above)) + 1) if above >= 1 else 1
    else:  # s >= S / n
        low = max(image / level for image, level in pairs)
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


def fixed_input_size(backbone) -> Optional[Tuple[int, int]]:
    """The one input size ``backbone`` takes, if it has one: a timm ViT built with a fixed
    ``img_size`` (its patch embedding's ``strict_img_size``), e.g. behind mmseg's
    TIMMBackbone."""
    for module in backbone.modules():
        size = getattr(module, 'img_size', None)
        if getattr(module, 'strict_img_size', False) and size is not None:
            return int(size[0]), int(size[1])
    return None


def config_input_size(cfg) -> Optional[Tuple[int, int]]:
    """The input size an mmseg config's model is meant for: its data preprocessor's
    ``size``, else the config's ``crop_size``, else the backbone's ``img_size``; None if it
    names none."""
    model = cfg.get('model', {})
    for size in ((model.get('data_preprocessor') or {}).get('size'), cfg.get('crop_size'),
                 (model.get('backbone') or {}).get('img_size')):
        if size is not None:
            return (int(size), int(size)) if isinstance(size, int) else \
                (int(size[0]), int(size[1]))
    return None


def probe_stride(features: Callable, size: Sequence[int], device=None) -> int:
    """The stride of the feature grid ``features`` (images -> (B, C, h, w)) gives for
    (H, W) ``size`` inputs, measured on a zero image.

    Raises:
        ValueError: where the backbone refuses the size, with its reason.
    """
    import torch
    height, width = size
    try:
        with torch.no_grad():
            grid = features(torch.zeros(1, 3, height, width, device=device)).shape[-2:]
    except (AssertionError, RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f'the backbone does not take {height} x {width} inputs: '
                         f'{reason}') from None
    return level_stride(size, grid, unpadded=True)


def stride_multiples_around(size: Sequence[int], stride: int
                            ) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The multiples of ``stride`` nearest to each side of ``size``: the sizes below (at
    least ``stride``) and above it, to propose for a size the feature grid does not tile."""
    below = tuple(max(stride, side // stride * stride) for side in size)
    above = tuple(-(-side // stride) * stride for side in size)
    return below, above


def check_stride_multiple(option: str, size: Sequence[int], stride: int) -> None:
    """Refuses an input size that the backbone's feature grid of ``stride`` does not tile:
    its features would cover more or less than the image and be stretched over it."""
    if all(side % stride == 0 for side in size):
        return
    cells = ' x '.join(f'{side / stride:g}' for side in size)
    below, above = stride_multiples_around(size, stride)
    raise ValueError(
        f'{option} {size[0]} {size[1]}: the backbone\'s features (stride {stride}) would cover '
        f'{cells} cells of it and be stretched over the image; use a multiple of {stride}, '
        f'e.g. {option} {below[0]} {below[1]} or {option} {above[0]} {above[1]}')


def round_to_stride(size: Sequence[int], stride: int) -> Tuple[int, int]:
    """``size`` rounded to the nearest multiples of ``stride`` (at least one)."""
    return tuple(max(stride, round(side / stride) * stride) for side in size)


def backbone_input_size(option: str, requested: Optional[Sequence[int]],
                        default: Sequence[int], features: Callable, backbone,
                        probe_size: Sequence[int], device=None) -> Tuple[int, int]:
    """The (H, W) a tool runs ``features`` (images -> (B, C, h, w), e.g. a backbone
    level) at: ``requested`` if the backbone takes it and its feature grid tiles it, else a
    ValueError naming sizes that work; without a request, ``default`` rounded to the grid's
    stride. A backbone with a fixed input size (:func:`fixed_input_size`) takes only that.

    ``probe_size``, a size the backbone takes (e.g. :func:`config_input_size`), measures
    the stride.
    """
    fixed = fixed_input_size(backbone)
    if fixed is not None:
        if requested is not None and tuple(requested) != fixed:
            raise ValueError(
                f'{option} {requested[0]} {requested[1]}: the backbone takes only {fixed[0]} x '
                f'{fixed[1]} inputs (a timm model built with that img_size; build it with '
                f'dynamic_img_size=True for others); use {option} {fixed[0]} {fixed[1]}')
        return fixed
    stride = probe_stride(features, probe_size, device)
    if requested is None:
        return round_to_stride(default, stride)
    check_stride_multiple(option, requested, stride)
    probe_stride(features, requested, device)  # refused for another reason: say which
    return int(requested[0]), int(requested[1])
