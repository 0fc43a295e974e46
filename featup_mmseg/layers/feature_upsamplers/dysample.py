"""DySample: upsampling by learned point sampling."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..argument_checks import check_int, check_number
from .common import HALF_TYPES, check_inputs, check_scaled_size, crop, empty_batch


class DySample(nn.Module):
    """Upsamples the source by DySample (Liu et al., "Learning to Upsample by Learning to
    Sample", ICCV 2023), its 'lp' style (offsets from the low-res source by a linear
    layer) with the static scope factor, the paper's usual baseline configuration.

    For a source S (B, C, h, w) and scale s, the channels are split into ``groups``; a 1x1
    conv gives each group an offset for each of the s x s sub-pixels of every source pixel,
    ``O = scope * conv(S)`` (B, 2 * groups * s^2, h, w), in source pixels. Output pixel
    (Y, X) of group g samples S_g bilinearly (``F.grid_sample``, ``align_corners=False``,
    border padding) at ``((X + 0.5) / s + O_x, (Y + 0.5) / s + O_y)`` in source pixel units
    (pixel j covers [j, j + 1)): with zero offsets, exactly bilinear x s upsampling
    (``F.interpolate(S, scale_factor=s, mode='bilinear', align_corners=False)``). The offset
    conv starts near zero (normal, std 0.001; zero bias), as in the paper.

    Sampling runs in float32 under float16/bfloat16: half-precision grid coordinates are
    off by up to a pixel on maps of a few hundred pixels. Cost: 2 groups s^2 C MACs per
    source pixel, 4C per output pixel (bilinear taps); in SegFormer-B1's decoder (C = 256,
    six x2 stages from 16/32/64 px) 8,224 parameters per stage, +0.05 M and 0.18 GMACs in
    all. The guidance's content is ignored; only its size is used.

    Sizes: x ``scale_factor`` exactly, or a guidance up to s - 1 pixels smaller per side
    (65 -> 129 for s = 2), computed as the crop of the exact result (see :mod:`.common`);
    other sizes raise a ValueError.

    Args:
        source_dim: channels of the source (and of the output); a multiple of ``groups``.
        guidance_dim: channels of the guidance (checked at forward, otherwise unused).
        scale_factor: integer upsampling factor s (2).
        groups: channel groups with their own offsets (4).
        scope: static scope factor bounding the offsets' scale (0.25).
    """

    def __init__(self, source_dim: int, guidance_dim: int, scale_factor: int = 2,
                 groups: int = 4, scope: float = 0.25):
        super().__init__()
        owner = type(self).__name__
        self.source_dim = check_int(owner, 'source_dim', source_dim)
        self.guidance_dim = check_int(owner, 'guidance_dim', guidance_dim)
        self.scale_factor = check_int(owner, 'scale_factor', scale_factor)
        self.groups = check_int(owner, 'groups', groups)
        self.scope = check_number(owner, 'scope', scope, 0.0, inclusive=False)
        if source_dim % groups:
            raise ValueError(f'{owner}: groups ({groups}) must divide source_dim '
                             f'({source_dim})')
        # channel ((xy * groups + g) * s + a) * s + b: coordinate xy (0: x, 1: y) of group g
        # at sub-pixel (a, b)
        self.offset = nn.Conv2d(source_dim, 2 * groups * self.scale_factor**2, 1)
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)

    def extra_repr(self) -> str:
        return (f'source_dim={self.source_dim}, guidance_dim={self.guidance_dim}, '
                f'scale_factor={self.scale_factor}, groups={self.groups}, scope={self.scope}')

    def sampling_grid(self, source: torch.Tensor) -> torch.Tensor:
        """(B * groups, s*h, s*w, 2) sampling positions in grid_sample's [-1, 1], in float32
        for half-precision sources."""
        scale, batch, (height, width) = self.scale_factor, source.shape[0], source.shape[-2:]
        dtype = _sampling_dtype(source)
        offsets = self.scope * self.offset(source).to(dtype)
        offsets = F.pixel_shuffle(offsets.view(batch, 2, -1, height, width), scale)
        # (B, 2, groups, s*h, s*w): offsets of each output pixel, in source pixels
        rows = (torch.arange(scale * height, device=source.device, dtype=dtype) + 0.5) / scale
        cols = (torch.arange(scale * width, device=source.device, dtype=dtype) + 0.5) / scale
        x = (cols + offsets[:, 0]) * (2 / width) - 1
        y = (rows[:, None] + offsets[:, 1]) * (2 / height) - 1
        return torch.stack([x, y], dim=-1).flatten(0, 1)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_inputs(owner, source, guidance, self.source_dim, self.guidance_dim)
        check_scaled_size(owner, source, guidance, self.scale_factor)
        if not len(source):
            return empty_batch(source, guidance)
        batch, channels, height, width = source.shape
        grouped = source.to(_sampling_dtype(source)).reshape(
            batch * self.groups, channels // self.groups, height, width)
        sampled = F.grid_sample(grouped, self.sampling_grid(source), mode='bilinear',
                                padding_mode='border', align_corners=False)
        out = sampled.reshape(batch, channels, *sampled.shape[-2:]).to(source.dtype)
        return crop(out, *guidance.shape[-2:])


def _sampling_dtype(source: torch.Tensor) -> torch.dtype:
    return torch.float32 if source.dtype in HALF_TYPES else source.dtype
