"""Resize-conv: bilinear resizing followed by a learned convolution."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..argument_checks import check_int
from .common import check_inputs, check_odd, empty_batch


class ResizeConv(nn.Module):
    """Bilinear resize of the source to the guidance's size, then a k x k convolution.

    The "resize-conv" upsampler of U-Net style decoders (Odena et al., "Deconvolution and
    Checkerboard Artifacts", Distill 2016), the resize-conv baseline of FeatUp's Table 2:
    ``conv(bilinear(source, (H, W)))`` with ``F.interpolate(..., align_corners=False)`` and a
    ``source_dim -> source_dim`` convolution with bias, no normalisation or activation.
    Cost: k^2 C^2 multiply-accumulates (MACs) per output pixel; in SegFormer-B1's decoder
    (C = 256, six x2 stages to 32/64/128 px at 512 px input) 590,080 parameters per stage,
    +3.54 M and 34.4 GMACs in all, as in FeatUp's Table 2 (+3.54 M, +34.40 GFLOPs).

    The guidance's content is ignored; only its size is used. Any output size works, a
    non-exact x2 pair (e.g. 65 -> 129) included: the bilinear resize goes straight to it.

    Args:
        source_dim: channels of the source (and of the output).
        guidance_dim: channels of the guidance (checked at forward, otherwise unused).
        kernel_size: odd size of the convolution (3).
    """

    def __init__(self, source_dim: int, guidance_dim: int, kernel_size: int = 3):
        super().__init__()
        owner = type(self).__name__
        self.source_dim = check_int(owner, 'source_dim', source_dim)
        self.guidance_dim = check_int(owner, 'guidance_dim', guidance_dim)
        kernel_size = check_odd(owner, 'kernel_size', kernel_size)
        self.conv = nn.Conv2d(source_dim, source_dim, kernel_size, padding=kernel_size // 2)

    def extra_repr(self) -> str:
        return f'source_dim={self.source_dim}, guidance_dim={self.guidance_dim}'

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        check_inputs(type(self).__name__, source, guidance, self.source_dim, self.guidance_dim)
        if not len(source):
            return empty_batch(source, guidance)
        resized = F.interpolate(source, size=guidance.shape[-2:], mode='bilinear',
                                align_corners=False)
        return self.conv(resized)
