"""SAPA: similarity-aware point affiliation."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import window_cross_correlation
from ..argument_checks import check_int
from ..channel_norm import ChannelNorm
from .common import (HALF_TYPES, check_inputs, check_odd, check_scaled_size, crop, empty_batch,
                     pad_bottom_right, reassemble, softmax_taps)


class SAPA(nn.Module):
    """Upsamples the source by SAPA-B (Lu et al., "SAPA: Similarity-Aware Point Affiliation
    for Feature Upsampling", NeurIPS 2022), the bilinear-similarity variant of the paper's
    SegFormer experiments and of its public code.

    For guidance G (B, Cg, H, W) and source S (B, C, h, w), scale s:

    1. queries ``q = W_q LN(G)`` (B, D, H, W) and keys ``k = W_k LN(S)`` (B, D, h, w), with
       channel LayerNorms and 1x1 projections (with bias) to ``embedding_dim`` D;
    2. the similarity of each query (Y, X) to the keys of the k_up x k_up window around
       (Y // s, X // s), ``<q(Y, X), k(Y // s + i - r, X // s + j - r)>``, zero for keys
       outside the source, softmax over the k_up^2 taps (no temperature, as in SAPA);
    3. the output is that kernel's weighted sum of the raw source S over the same window.

    Step 2 is, per sub-pixel phase (a, b), the compiled ``window_cross_correlation`` of the
    phase's queries ``q[..., a::s, b::s]`` with the keys at the low resolution; step 3 the
    compiled ``adaptive_conv`` (:func:`~.common.reassemble`): nothing of size
    D x k_up^2 x H x W is materialised. Under float16/bfloat16 the similarities are computed
    in float32.

    Defaults (k_up = 5, D = 32) reproduce the cost SAPA reports for its SegFormer-B1
    experiments. Cost: D Cg + k_up^2 D + k_up^2 C MACs per output pixel, D C per source
    pixel; in SegFormer-B1's decoder (C = 256, six x2 stages to 32/64/128 px) 17,472
    parameters per stage, +0.10 M and 1.02 GMACs in all, as SAPA reports;
    ``embedding_dim=64`` (the default of SAPA's code) gives 33,920 per stage, +0.20 M and
    1.66 GMACs (FeatUp's Table 2: +0.20 M, +1.15 GFLOPs). Weights: truncated normal
    (std 0.02), zero biases.

    Sizes: x ``scale_factor`` exactly, or a guidance up to s - 1 pixels smaller per side
    (65 -> 129 for s = 2), computed as the crop of the exact result (see :mod:`.common`);
    other sizes raise a ValueError.

    Args:
        source_dim: channels C of the source (and of the output).
        guidance_dim: channels Cg of the guidance.
        scale_factor: integer upsampling factor s (2).
        up_kernel: odd window k_up (5).
        embedding_dim: channels D of queries and keys (32).
    """

    def __init__(self, source_dim: int, guidance_dim: int, scale_factor: int = 2,
                 up_kernel: int = 5, embedding_dim: int = 32):
        super().__init__()
        owner = type(self).__name__
        self.source_dim = check_int(owner, 'source_dim', source_dim)
        self.guidance_dim = check_int(owner, 'guidance_dim', guidance_dim)
        self.scale_factor = check_int(owner, 'scale_factor', scale_factor)
        self.up_kernel = check_odd(owner, 'up_kernel', up_kernel)
        embedding_dim = check_int(owner, 'embedding_dim', embedding_dim)
        self.norm_guidance = ChannelNorm(guidance_dim)
        self.norm_source = ChannelNorm(source_dim)
        self.query = nn.Conv2d(guidance_dim, embedding_dim, 1)
        self.key = nn.Conv2d(source_dim, embedding_dim, 1)
        for proj in (self.query, self.key):
            nn.init.trunc_normal_(proj.weight, std=0.02)
            nn.init.zeros_(proj.bias)

    def extra_repr(self) -> str:
        return (f'source_dim={self.source_dim}, guidance_dim={self.guidance_dim}, '
                f'scale_factor={self.scale_factor}, up_kernel={self.up_kernel}')

    def kernel(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """(B, up_kernel**2, s*h, s*w) weights for a guidance of the exact size s*h x s*w."""
        scale = self.scale_factor
        queries = self.query(self.norm_guidance(guidance))
        keys = self.key(self.norm_source(source))
        if keys.dtype in HALF_TYPES or queries.dtype in HALF_TYPES:
            queries, keys = queries.float(), keys.float()
        batch, _, height, width = keys.shape
        logits = torch.stack([
            window_cross_correlation(queries[:, :, a::scale, b::scale], keys, self.up_kernel,
                                     'zeros') for a in range(scale) for b in range(scale)
        ], dim=2)  # (B, k*k, s*s, h, w): phase a*s + b of tap p
        logits = logits.reshape(batch, -1, height, width)
        return softmax_taps(F.pixel_shuffle(logits, scale), source.dtype)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_inputs(owner, source, guidance, self.source_dim, self.guidance_dim)
        height, width = check_scaled_size(owner, source, guidance, self.scale_factor)
        if not len(source):
            return empty_batch(source, guidance)
        kernel = self.kernel(source, pad_bottom_right(guidance, height, width))
        return crop(reassemble(source, kernel, self.scale_factor), *guidance.shape[-2:])
