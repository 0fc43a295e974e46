"""FADE: fusing the assets of decoder and encoder."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..argument_checks import check_int
from .common import (check_inputs, check_odd, check_scaled_size, crop, empty_batch,
                     pad_bottom_right, reassemble, softmax_taps)


class FADE(nn.Module):
    """Upsamples the source (the decoder feature) guided by the encoder feature, by FADE
    (Lu et al., "FADE: Fusing the Assets of Decoder and Encoder for Task-Agnostic
    Upsampling", ECCV 2022), the full operator (not FADE-Lite) of its SegFormer experiments.

    For guidance E (the encoder feature, B, C, H, W) and source D (the decoder feature,
    B, C, h, w), scale s:

    1. semi-shift convolution (kernel generation from both): compress E and D to
       ``compressed_channels`` by 1x1 convs (E's with bias, D's without), apply one shared
       ``encoder_kernel`` x ``encoder_kernel`` conv to both, and add, at each high-res
       pixel (Y, X), E's response at (Y, X) and D's at (Y // s, X // s) (nearest x s);
    2. softmax over the ``up_kernel``^2 channels: CARAFE's reassembly kernel, applied to D
       on the compiled ``adaptive_conv`` (:func:`~.common.reassemble`);
    3. decoder-dependent gating: ``g = sigmoid(nearest_x s(conv1x1(D)))`` (C -> 1) and
       ``out = g * E + (1 - g) * reassembled``.

    The gate adds E to the output, so ``guidance_dim`` must equal ``source_dim``. Defaults
    (k_up = 5, encoder kernel 3, C_m = 64) are the paper's. Cost: C_m C + k_e^2 C_m k_up^2 +
    k_up^2 C + 2C MACs per output pixel, C_m C + k_e^2 C_m k_up^2 + C per source pixel; in
    SegFormer-B1's decoder (C = 256, six x2 stages to 32/64/128 px) 47,514 parameters per
    stage, +0.29 M and 2.65 GMACs in all (FADE: +0.29 M, +2.65; FeatUp's Table 2: +0.29 M,
    +2.95 GFLOPs). Weights: Xavier-uniform, zero biases (as in FADE's code).

    Sizes: x ``scale_factor`` exactly, or a guidance up to s - 1 pixels smaller per side
    (65 -> 129 for s = 2): E's terms are computed at E's own size (its convolution
    zero-pads at E's true border), D's terms and the reassembly at s*h x s*w, cropped to
    H x W (see :mod:`.common`); other sizes raise a ValueError.

    Args:
        source_dim: channels of the source (and of the output).
        guidance_dim: channels of the guidance; must equal ``source_dim``.
        scale_factor: integer upsampling factor s (2).
        up_kernel: odd reassembly window k_up (5).
        encoder_kernel: odd size of the semi-shift convolution (3).
        compressed_channels: channels C_m of the compressed features (64).
    """

    def __init__(self, source_dim: int, guidance_dim: int, scale_factor: int = 2,
                 up_kernel: int = 5, encoder_kernel: int = 3, compressed_channels: int = 64):
        super().__init__()
        owner = type(self).__name__
        self.source_dim = check_int(owner, 'source_dim', source_dim)
        self.guidance_dim = check_int(owner, 'guidance_dim', guidance_dim)
        if guidance_dim != source_dim:
            raise ValueError(f'{owner}: the gate adds the guidance (encoder feature) to the '
                             f'upsampled source, so guidance_dim ({guidance_dim}) must equal '
                             f'source_dim ({source_dim})')
        self.scale_factor = check_int(owner, 'scale_factor', scale_factor)
        self.up_kernel = check_odd(owner, 'up_kernel', up_kernel)
        encoder_kernel = check_odd(owner, 'encoder_kernel', encoder_kernel)
        compressed_channels = check_int(owner, 'compressed_channels', compressed_channels)
        self.gate = nn.Conv2d(source_dim, 1, 1)
        self.guidance_compressor = nn.Conv2d(guidance_dim, compressed_channels, 1)
        self.source_compressor = nn.Conv2d(source_dim, compressed_channels, 1, bias=False)
        self.content_encoder = nn.Conv2d(compressed_channels, self.up_kernel**2,
                                         encoder_kernel, padding=encoder_kernel // 2)
        for conv in (self.gate, self.guidance_compressor, self.source_compressor,
                     self.content_encoder):
            nn.init.xavier_uniform_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def extra_repr(self) -> str:
        return (f'source_dim={self.source_dim}, guidance_dim={self.guidance_dim}, '
                f'scale_factor={self.scale_factor}, up_kernel={self.up_kernel}')

    def _nearest_up(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=self.scale_factor, mode='nearest')
        return crop(up, height, width)

    def kernel(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """(B, up_kernel**2, H, W) reassembly weights at the guidance's size."""
        height, width = guidance.shape[-2:]
        logits = self.content_encoder(self.guidance_compressor(guidance)) + self._nearest_up(
            self.content_encoder(self.source_compressor(source)), height, width)
        return softmax_taps(logits, source.dtype)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_inputs(owner, source, guidance, self.source_dim, self.guidance_dim)
        exact_height, exact_width = check_scaled_size(owner, source, guidance,
                                                      self.scale_factor)
        if not len(source):
            return empty_batch(source, guidance)
        height, width = guidance.shape[-2:]
        kernel = pad_bottom_right(self.kernel(source, guidance), exact_height, exact_width)
        reassembled = crop(reassemble(source, kernel, self.scale_factor), height, width)
        gate = torch.sigmoid(self._nearest_up(self.gate(source), height, width))
        return gate * guidance + (1 - gate) * reassembled
