"""CARAFE: content-aware reassembly of features."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..argument_checks import check_int
from .common import (check_inputs, check_odd, check_scaled_size, crop, empty_batch, reassemble,
                     softmax_taps)


class CARAFE(nn.Module):
    """Upsamples the source by CARAFE (Wang et al., "CARAFE: Content-Aware ReAssembly of
    FEatures", ICCV 2019), the paper's operator as in mmcv's ``CARAFEPack``.

    1. channel compressor: 1x1 conv ``source_dim -> compressed_channels``;
    2. content encoder: ``encoder_kernel`` x ``encoder_kernel`` conv to
       ``s*s * up_kernel**2`` channels at the source's resolution;
    3. kernel normaliser: pixel shuffle to (B, up_kernel**2, s*h, s*w), softmax over the taps;
    4. reassembly: each output pixel (Y, X) is the kernel-weighted sum of the
       ``up_kernel`` x ``up_kernel`` source neighbourhood of (Y // s, X // s), zero outside
       the source. This runs on the compiled ``adaptive_conv``, one call per sub-pixel
       phase, at the low resolution (:func:`~.common.reassemble`).

    Defaults are the paper's (k_up = 5, k_encoder = 3, C_m = 64), as in SAPA's/FADE's
    SegFormer comparison. Cost per source pixel: C C_m + k_encoder^2 C_m s^2 k_up^2 MACs to
    predict kernels, s^2 k_up^2 C to reassemble; in SegFormer-B1's decoder (C = 256, six x2
    stages from 16/32/64 px) 74,148 parameters per stage, +0.44 M and 1.45 GMACs in all,
    as SAPA and FADE report (FeatUp's Table 2 lists +0.78 M, +1.66 GFLOPs).

    The guidance's content is ignored; only its size is used. Sizes: x ``scale_factor``
    exactly, or a guidance up to s - 1 pixels smaller per side (65 -> 129 for s = 2),
    computed as the crop of the exact result (see :mod:`.common`); other sizes raise a
    ValueError.

    Args:
        source_dim: channels of the source (and of the output).
        guidance_dim: channels of the guidance (checked at forward, otherwise unused).
        scale_factor: integer upsampling factor s (2).
        up_kernel: odd reassembly window k_up (5).
        encoder_kernel: odd content-encoder kernel size k_encoder (3).
        compressed_channels: channels C_m of the compressed source (64).
    """

    def __init__(self, source_dim: int, guidance_dim: int, scale_factor: int = 2,
                 up_kernel: int = 5, encoder_kernel: int = 3, compressed_channels: int = 64):
        super().__init__()
        owner = type(self).__name__
        self.source_dim = check_int(owner, 'source_dim', source_dim)
        self.guidance_dim = check_int(owner, 'guidance_dim', guidance_dim)
        self.scale_factor = check_int(owner, 'scale_factor', scale_factor)
        self.up_kernel = check_odd(owner, 'up_kernel', up_kernel)
        encoder_kernel = check_odd(owner, 'encoder_kernel', encoder_kernel)
        compressed_channels = check_int(owner, 'compressed_channels', compressed_channels)
        self.channel_compressor = nn.Conv2d(source_dim, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(compressed_channels,
                                         self.scale_factor**2 * self.up_kernel**2,
                                         encoder_kernel, padding=encoder_kernel // 2)
        # mmcv's CARAFEPack initialisation: near-uniform kernels at the start
        nn.init.xavier_uniform_(self.channel_compressor.weight)
        nn.init.zeros_(self.channel_compressor.bias)
        nn.init.normal_(self.content_encoder.weight, std=0.001)
        nn.init.zeros_(self.content_encoder.bias)

    def extra_repr(self) -> str:
        return (f'source_dim={self.source_dim}, guidance_dim={self.guidance_dim}, '
                f'scale_factor={self.scale_factor}, up_kernel={self.up_kernel}')

    def kernel(self, source: torch.Tensor) -> torch.Tensor:
        """(B, up_kernel**2, s*h, s*w) reassembly weights, summing to 1 over the taps."""
        logits = self.content_encoder(self.channel_compressor(source))
        return softmax_taps(F.pixel_shuffle(logits, self.scale_factor), source.dtype)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_inputs(owner, source, guidance, self.source_dim, self.guidance_dim)
        check_scaled_size(owner, source, guidance, self.scale_factor)
        if not len(source):
            return empty_batch(source, guidance)
        out = reassemble(source, self.kernel(source), self.scale_factor)
        return crop(out, *guidance.shape[-2:])
