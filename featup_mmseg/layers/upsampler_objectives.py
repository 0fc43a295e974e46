"""AnyUp's and NAF's training objectives, for any image-guided upsampler of a frozen
backbone's features (FeatUp's multi-view objective is :mod:`.multiview`).

Both learn from the backbone itself at two resolutions, without labels:

- NAF (:func:`naf_objective`): the features of the image at half its size are upsampled
  to the grid of the features of the full image, guided by the image (resized to at most
  224 px, at most 4 px per output cell), and compared by mean squared error.
- AnyUp (:func:`anyup_objective`): the image at half its size gives the low-res features;
  random half-size crops of the full image, at offsets on the backbone's patch grid, give
  high-res targets. The prediction at the full image's grid, guided by the half-size
  image, is cut at each crop and compared with its features by :func:`cosine_mse_loss`;
  plus, weighted 0.1 each, the prediction guided by a photometrically augmented image
  against the (fixed) prediction guided by the image, and the prediction area-pooled back
  to the low-res grid against the low-res features.

A step takes the (normalised) images of a batch, ``features(images) -> (B, C, h, w)`` (the
frozen backbone's level) and ``upsample(features, image, output_size) -> (B, C, Ho, Wo)``
(the upsampler being trained), and returns the loss to backpropagate.
"""
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

FeaturesFn = Callable[[Tensor], Tensor]
UpsampleFn = Callable[[Tensor, Tensor, Tuple[int, int]], Tensor]

OBJECTIVES = ('featup', 'anyup', 'naf')
NAF_MAX_GUIDANCE = 224  # NAF's guidance image: at most this side, at most 4 px per cell
AUGMENTATION = dict(jitter=0.5, grayscale=0.1, blur=0.35, noise=0.6)  # AnyUp's probabilities


def _resize(images: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize, antialiased when shrinking (as the authors' torchvision resize)."""
    shrinking = any(s < n for s, n in zip(size, images.shape[-2:]))
    return F.interpolate(images, size=tuple(size), mode='bilinear', align_corners=False,
                         antialias=shrinking)


def _half_size(size: Sequence[int], stride: int) -> Tuple[int, int]:
    """Half of ``size``, rounded to the nearest multiple of the backbone's stride (>= 1
    cell)."""
    return tuple(max(stride, stride * round(side / 2 / stride)) for side in size)


def _stride(images: Tensor, features: Tensor) -> int:
    stride = images.shape[-1] / features.shape[-1]
    if stride != round(stride) or images.shape[-2] != round(stride) * features.shape[-2]:
        raise ValueError(f'upsampler objective: the backbone maps {tuple(images.shape[-2:])} '
                         f'images to {tuple(features.shape[-2:])} features, not a whole '
                         'number of pixels per cell; use image sizes that are multiples of '
                         "the backbone's patch size")
    return int(stride)


def cosine_mse_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """AnyUp's loss (from JAFAR): the mean over pixels of 1 - cos(pred, target), plus the
    mean squared error of both after the target pixel's min-max normalisation (its
    channels' minimum and maximum)."""
    cosine = 1 - F.cosine_similarity(pred, target, dim=1, eps=1e-8)
    low = target.amin(dim=1, keepdim=True)
    scale = target.amax(dim=1, keepdim=True) - low + eps
    return cosine.mean() + F.mse_loss((pred - low) / scale, (target - low) / scale)


def naf_objective(images: Tensor, features: FeaturesFn, upsample: UpsampleFn) -> Tensor:
    """NAF's objective on a batch of normalised images (B, 3, H, W); see the module."""
    with torch.no_grad():
        target = features(images)
        stride = _stride(images, target)
        low_res = features(_resize(images, _half_size(images.shape[-2:], stride)))
    output_size = tuple(target.shape[-2:])
    guidance = _resize(images, [min(NAF_MAX_GUIDANCE, 4 * side) for side in output_size])
    pred = upsample(low_res, guidance, output_size)
    return F.mse_loss(pred.float(), target.float())


def anyup_objective(images: Tensor, features: FeaturesFn, upsample: UpsampleFn,
                    num_crops: int = 4, augmentation_weight: float = 0.1,
                    downsampling_weight: float = 0.1, pixel_mean: Optional[Tensor] = None,
                    pixel_std: Optional[Tensor] = None,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """AnyUp's objective on a batch of normalised images (B, 3, H, W); see the module.

    ``pixel_mean`` and ``pixel_std`` (3 values, the normalisation of ``images`` in 0..255)
    let the photometric augmentation work on the pixels; ``generator`` (CPU) draws the
    crops and the augmentation.
    """
    batch = images.shape[0]
    with torch.no_grad():
        probe = features(images[:1])
        stride = _stride(images, probe)
        half = _half_size(images.shape[-2:], stride)
        guidance = _resize(images, half)
        low_res = features(guidance)
        # patch-aligned offsets of half-size crops of the full image
        cells = [(full - part) // stride + 1 for full, part in zip(images.shape[-2:], half)]
        offsets = torch.stack([torch.randint(n, (batch, num_crops), generator=generator)
                               for n in cells], dim=-1)
        crops = torch.stack([images[b, :, top * stride:top * stride + half[0],
                                    left * stride:left * stride + half[1]]
                             for b in range(batch) for top, left in offsets[b].tolist()])
        targets = features(crops)
    full_grid = tuple(side // stride for side in images.shape[-2:])
    pred = upsample(low_res, guidance, full_grid)
    crop_grid = targets.shape[-2:]
    pred_crops = torch.stack([pred[b, :, top:top + crop_grid[0], left:left + crop_grid[1]]
                              for b in range(batch) for top, left in offsets[b].tolist()])
    loss = cosine_mse_loss(pred_crops.float(), targets.float())
    if augmentation_weight:
        augmented = photometric_augmentation(guidance, pixel_mean, pixel_std, generator)
        with torch.no_grad():
            reference = upsample(low_res, guidance, half)
        loss = loss + augmentation_weight * cosine_mse_loss(
            upsample(low_res, augmented, half).float(), reference.float())
    if downsampling_weight:
        pooled = F.interpolate(pred, size=low_res.shape[-2:], mode='area')
        loss = loss + downsampling_weight * cosine_mse_loss(pooled.float(), low_res.float())
    return loss


def photometric_augmentation(images: Tensor, pixel_mean: Optional[Tensor] = None,
                             pixel_std: Optional[Tensor] = None,
                             generator: Optional[torch.Generator] = None) -> Tensor:
    """A photometric augmentation of normalised images, per image: colour jitter
    (brightness, contrast 0.2, saturation 0.3), grayscale, Gaussian blur (5 x 5, sigma
    0.3..1.5) and Gaussian noise (sigma 0.03), with AnyUp's probabilities; on pixels in
    0..1 (``pixel_mean``/``pixel_std`` in 0..255 undo the normalisation; ImageNet's when
    None). AnyUp's JPEG, equalisation, posterisation, solarisation and inversion are left
    out (no torch op for them)."""
    mean = torch.tensor([123.675, 116.28, 103.53]) if pixel_mean is None else pixel_mean
    std = torch.tensor([58.395, 57.12, 57.375]) if pixel_std is None else pixel_std
    mean = mean.reshape(1, 3, 1, 1).to(images) / 255
    std = std.reshape(1, 3, 1, 1).to(images) / 255
    pixels = images * std + mean
    batch = images.shape[0]

    def draw(probability):
        return (torch.rand(batch, generator=generator) < probability).to(images.device)

    def uniform(low, high):
        values = low + (high - low) * torch.rand(batch, generator=generator)
        return values.to(images).reshape(batch, 1, 1, 1)

    def where(chosen, changed, unchanged):
        return torch.where(chosen.reshape(batch, 1, 1, 1), changed, unchanged)

    gray_weights = torch.tensor([0.299, 0.587, 0.114]).to(images).reshape(1, 3, 1, 1)

    def gray(x):
        return (x * gray_weights).sum(1, keepdim=True)

    jitter = draw(AUGMENTATION['jitter'])
    jittered = (pixels * uniform(0.8, 1.2)).clamp(0, 1)
    contrast = uniform(0.8, 1.2)
    jittered = (jittered * contrast + (1 - contrast) * gray(jittered).mean((2, 3), True))
    saturation = uniform(0.7, 1.3)
    jittered = (jittered * saturation + (1 - saturation) * gray(jittered)).clamp(0, 1)
    pixels = where(jitter, jittered, pixels)
    pixels = where(draw(AUGMENTATION['grayscale']), gray(pixels).expand_as(pixels), pixels)
    sigma = uniform(0.3, 1.5)
    taps = torch.arange(-2, 3).to(images)
    kernel = torch.exp(-taps.reshape(1, -1) ** 2 / (2 * sigma.reshape(batch, 1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, 5), per image
    blurred = _separable_blur(pixels, kernel)
    pixels = where(draw(AUGMENTATION['blur']), blurred, pixels)
    noise = 0.03 * torch.randn(pixels.shape, generator=generator).to(pixels)
    pixels = where(draw(AUGMENTATION['noise']), (pixels + noise).clamp(0, 1), pixels)
    return (pixels - mean) / std


def _separable_blur(pixels: Tensor, kernel: Tensor) -> Tensor:
    """Each image blurred by its own 1-D kernel along both axes (reflect padding)."""
    batch, channels = pixels.shape[:2]
    radius = kernel.shape[1] // 2
    weights = kernel.repeat_interleave(channels, 0)  # (B*C, k)
    x = pixels.reshape(1, batch * channels, *pixels.shape[-2:])
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode='reflect'),
                 weights[:, None, None, :], groups=batch * channels)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode='reflect'),
                 weights[:, None, :, None], groups=batch * channels)
    return x.reshape(pixels.shape)


def check_objective(owner: str, objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f'{owner}: objective must be one of {OBJECTIVES}, got {objective!r}')
    return objective


__all__ = ['OBJECTIVES', 'anyup_objective', 'check_objective', 'cosine_mse_loss',
           'naf_objective', 'photometric_augmentation']
