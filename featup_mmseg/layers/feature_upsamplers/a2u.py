"""A2U: affinity-aware upsampling."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..argument_checks import check_int
from ..pooling import average_pool
from .common import (check_inputs, check_odd, check_scaled_size, crop, empty_batch,
                     pad_bottom_right, reassemble, softmax_taps)

SCALE = 2  # the affinity encoders are stride-2 convolutions: A2U is defined for x2 only


class A2U(nn.Module):
    """Upsamples the source x2 by A2U (Dai, Lu and Shen, "Learning Affinity-Aware Upsampling
    for Deep Image Matting", CVPR 2021), the upsampling half of its shared-kernel ("share")
    low-rank bilinear model, as in its SegFormer comparison in SAPA and FADE.

    From the guidance G (B, Cg, H, W), the encoder's higher-resolution feature:

    1. two per-sample depthwise kernels, one for all channels each ("share"):
       ``u = conv_u(avg_pool(G, encoder_kernel))`` and ``v = conv_v(...)`` (Cg -> 1);
    2. stride-2 encodings ``U = LeakyReLU(GN(G * u))``, ``V = LeakyReLU(GN(G * v))``, with
       ``*`` the depthwise convolution (padding (encoder_kernel - 1) // 2) and GroupNorm of
       ``norm_groups`` groups: (B, Cg, h, w) each;
    3. the rank-1 affinity ``A = sum_c U_c V_c / sqrt(Cg)`` (B, 1, h, w);
    4. kernel logits ``p * A`` with ``p = conv_p(global_avg_pool(G))`` (Cg -> 4 k_up^2), a
       per-sample weight for each of the 4 sub-pixels x k_up^2 taps; pixel shuffle to
       (B, k_up^2, H, W) and, as in A2U, ``softmax(sigmoid(.))`` over the taps;
    5. CARAFE-style reassembly of the k_up x k_up source neighbourhood of (Y // 2, X // 2)
       (zero outside), on the compiled ``adaptive_conv`` (:func:`~.common.reassemble`).

    Defaults follow A2U's matting configuration used in those comparisons (k_up = 3,
    encoder_kernel = 6, GroupNorm with 32 groups). Cost per source pixel: 2 k_e^2 Cg + Cg +
    4 k_up^2 MACs for the kernels, 4 k_up^2 C to reassemble; in SegFormer-B1's decoder
    (C = 256, six x2 stages from 16/32/64 px) 10,790 parameters per stage, +0.065 M and
    0.41 GMACs in all (SAPA: +0.06 M; FADE: +0.12 M, +0.41; FeatUp's Table 2: +0.12 M,
    +0.51 GFLOPs: the +0.12 M also count A2U's downsampling-kernel generator, which
    upsampling never uses).

    Sizes: x2 exactly, or a guidance one pixel smaller per side (65 -> 129): the guidance is
    padded by replicating its last row/column, the x2 result is cropped (see
    :mod:`.common`); other sizes raise a ValueError.

    Args:
        source_dim: channels of the source (and of the output).
        guidance_dim: channels Cg of the guidance.
        up_kernel: odd reassembly window k_up (3).
        encoder_kernel: size of the stride-2 affinity encoders (6).
        norm_groups: GroupNorm groups of the encodings (32); must divide guidance_dim.
    """

    # for featup_mmseg.ops.onnx_export.export_onnx
    onnx_static_axes = {'batch': 'it convolves each sample with its own predicted kernel in '
                                 'one grouped convolution, whose groups (the batch size) an '
                                 'export fixes'}

    def __init__(self, source_dim: int, guidance_dim: int, up_kernel: int = 3,
                 encoder_kernel: int = 6, norm_groups: int = 32):
        super().__init__()
        owner = type(self).__name__
        self.source_dim = check_int(owner, 'source_dim', source_dim)
        self.guidance_dim = check_int(owner, 'guidance_dim', guidance_dim)
        self.up_kernel = check_odd(owner, 'up_kernel', up_kernel)
        self.encoder_kernel = check_int(owner, 'encoder_kernel', encoder_kernel, minimum=2)
        norm_groups = check_int(owner, 'norm_groups', norm_groups)
        if guidance_dim % norm_groups:
            raise ValueError(f'{owner}: norm_groups ({norm_groups}) must divide guidance_dim '
                             f'({guidance_dim})')
        self.encoder_u = nn.Conv2d(guidance_dim, 1, 1)
        self.encoder_v = nn.Conv2d(guidance_dim, 1, 1)
        self.norm_u = nn.GroupNorm(norm_groups, guidance_dim)
        self.norm_v = nn.GroupNorm(norm_groups, guidance_dim)
        self.kernel_weights = nn.Conv2d(guidance_dim, SCALE * SCALE * self.up_kernel**2, 1)

    def extra_repr(self) -> str:
        return (f'source_dim={self.source_dim}, guidance_dim={self.guidance_dim}, '
                f'up_kernel={self.up_kernel}, encoder_kernel={self.encoder_kernel}')

    def _encode(self, guidance: torch.Tensor, encoder: nn.Module,
                norm: nn.Module) -> torch.Tensor:
        """LeakyReLU(GN(depthwise stride-2 conv of G with its per-sample shared kernel))."""
        batch, size = guidance.shape[0], self.encoder_kernel
        kernel = encoder(average_pool(guidance, (size, size)))  # (B, 1, k, k)
        # One kernel per sample, shared by its channels: channels as the batch and samples
        # as B groups, rather than B * C groups (whose CPU backward is ~20x slower)
        encoded = F.conv2d(guidance.transpose(0, 1), kernel, stride=SCALE,
                           padding=(size - 1) // 2, groups=batch)
        return F.leaky_relu(norm(encoded.transpose(0, 1)))

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """(B, up_kernel**2, H, W) reassembly weights of an even-sized guidance."""
        affinity = (self._encode(guidance, self.encoder_u, self.norm_u)
                    * self._encode(guidance, self.encoder_v, self.norm_v)).sum(
                        1, keepdim=True) / math.sqrt(self.guidance_dim)
        weights = self.kernel_weights(F.adaptive_avg_pool2d(guidance, 1))  # (B, 4 k^2, 1, 1)
        # channel tap*4 + a*2 + b, which pixel_shuffle puts at tap, (2y+a, 2x+b)
        logits = F.pixel_shuffle(weights * affinity, SCALE)
        return softmax_taps(torch.sigmoid(logits), guidance.dtype)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_inputs(owner, source, guidance, self.source_dim, self.guidance_dim)
        height, width = check_scaled_size(owner, source, guidance, SCALE)
        if not len(source):
            return empty_batch(source, guidance)
        group_values = self.guidance_dim // self.norm_u.num_groups * source.shape[-2] * \
            source.shape[-1]
        if group_values < 2:
            raise ValueError(
                f'{owner}: its GroupNorm of norm_groups={self.norm_u.num_groups} over '
                f'guidance_dim={self.guidance_dim} channels normalises one value per group for a '
                f'{source.shape[-2]} x {source.shape[-1]} source (the encodings have the '
                "source's size), which has no variance; use a source of at least 2 pixels or "
                'fewer norm_groups (guidance_dim // norm_groups >= 2)')
        kernel = self.kernel(pad_bottom_right(guidance, height, width))
        return crop(reassemble(source, kernel, SCALE), *guidance.shape[-2:])
