"""IndexNet's decoder-side upsampling with indices learned from the guidance."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..argument_checks import check_choice, check_int
from .common import check_inputs, check_scaled_size, crop, empty_batch, pad_bottom_right

INDEX_BLOCKS = ('holistic', 'm2o', 'o2o')
SCALE = 2  # the index blocks are stride-2 convolutions: IndexNet is defined for x2 only


class IndexNet(nn.Module):
    """Upsamples the source x2 with IndexNet's decoder indices (Lu et al., "Indices Matter:
    Learning to Index for Deep Image Matting", ICCV 2019; "Index Networks", TPAMI 2022).

    An index block reads the guidance G (the encoder's higher-resolution feature, the one
    a stride-2 layer would downsample) and predicts, per low-res pixel, 4 logits (one per
    2 x 2 sub-pixel); the decoder index map is ``D = pixel_shuffle(sigmoid(logits))`` at the
    guidance's size and the output is ``D * nearest_x2(source)`` (indexed unpooling; the
    softmax-normalised encoder index of IndexNet's pooling is not used when upsampling).

    Index blocks (``index_block``, ``nonlinear``, ``context``, as in the paper):

    - 'holistic' (HIN): one index map shared by all channels, from
      conv(Cg -> 4) or, nonlinear, conv(Cg -> 2Cg) + BatchNorm + ReLU6 + 1x1 conv(2Cg -> 4);
    - 'm2o' / 'o2o' (depthwise DIN, many-to-one / one-to-one): one index map per channel,
      four branches conv(Cg -> Cg) (grouped per channel for 'o2o') [+ BN + ReLU6 + 1x1];
      they need ``guidance_dim == source_dim``.

    ``context=True`` uses 4 x 4 stride-2 kernels (padding 1) instead of 2 x 2. The default,
    holistic + nonlinear + context, is the variant whose cost SAPA's and FADE's SegFormer
    tables report: per source pixel 16 Cg 2Cg + 8 Cg MACs for the indices and 4C for the
    unpooling; in SegFormer-B1's decoder (C = 256, six x2 stages from 16/32/64 px)
    2,100,224 parameters per stage, +12.60 M and 30.65 GMACs in all (SAPA, FADE: +12.60 M,
    +30.65; FeatUp's Table 2: +12.6 M, +30.90 GFLOPs). FADE's published SegFormer training
    log shows ``index_block='m2o', nonlinear=False, context=False`` (+6.29 M, 15.3 GMACs).

    Sizes: x2 exactly, or a guidance one pixel smaller per side (65 -> 129): the guidance is
    padded by replicating its last row/column, the x2 result is cropped (see
    :mod:`.common`); other sizes raise a ValueError.

    Args:
        source_dim: channels of the source (and of the output).
        guidance_dim: channels Cg of the guidance.
        index_block: 'holistic', 'm2o' or 'o2o'.
        nonlinear: two-layer index block with BatchNorm and ReLU6.
        context: 4 x 4 instead of 2 x 2 index kernels.
    """

    def __init__(self, source_dim: int, guidance_dim: int, index_block: str = 'holistic',
                 nonlinear: bool = True, context: bool = True):
        super().__init__()
        owner = type(self).__name__
        self.source_dim = check_int(owner, 'source_dim', source_dim)
        self.guidance_dim = check_int(owner, 'guidance_dim', guidance_dim)
        self.index_block = check_choice(owner, 'index_block', index_block, INDEX_BLOCKS)
        check_choice(owner, 'nonlinear', nonlinear, (True, False))
        check_choice(owner, 'context', context, (True, False))
        if index_block != 'holistic' and guidance_dim != source_dim:
            raise ValueError(
                f"{owner}: index_block={index_block!r} predicts one index map per guidance "
                f'channel for the source channel of the same index, so guidance_dim '
                f'({guidance_dim}) must equal source_dim ({source_dim}); use '
                "index_block='holistic' otherwise")
        kernel_size, padding = (4, 1) if context else (2, 0)

        def index_conv(in_channels, out_channels, groups=1):
            if not nonlinear:
                return nn.Conv2d(in_channels, out_channels, kernel_size, stride=SCALE,
                                 padding=padding, groups=groups, bias=False)
            hidden = out_channels if index_block != 'holistic' else 2 * in_channels
            return nn.Sequential(
                nn.Conv2d(in_channels, hidden, kernel_size, stride=SCALE, padding=padding,
                          groups=groups, bias=False),
                nn.BatchNorm2d(hidden), nn.ReLU6(),
                nn.Conv2d(hidden, out_channels, 1, groups=groups, bias=False))

        if index_block == 'holistic':
            self.index_net = index_conv(guidance_dim, SCALE * SCALE)
        else:
            groups = guidance_dim if index_block == 'o2o' else 1
            self.index_net = nn.ModuleList(
                index_conv(guidance_dim, guidance_dim, groups) for _ in range(SCALE * SCALE))

    def extra_repr(self) -> str:
        return (f'source_dim={self.source_dim}, guidance_dim={self.guidance_dim}, '
                f'index_block={self.index_block!r}')

    def index_map(self, guidance: torch.Tensor) -> torch.Tensor:
        """Decoder index map D in (0, 1) of an even-sized guidance: (B, 1, H, W) for
        'holistic', (B, Cg, H, W) for the depthwise blocks."""
        if self.index_block == 'holistic':
            logits = self.index_net(guidance)
        else:
            branches = torch.stack([branch(guidance) for branch in self.index_net], dim=2)
            logits = branches.flatten(1, 2)  # channel c*4 + a*2 + b
        return F.pixel_shuffle(torch.sigmoid(logits), SCALE)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_inputs(owner, source, guidance, self.source_dim, self.guidance_dim)
        height, width = check_scaled_size(owner, source, guidance, SCALE)
        if not len(source):
            return empty_batch(source, guidance)
        index = self.index_map(pad_bottom_right(guidance, height, width))
        upsampled = F.interpolate(source, scale_factor=SCALE, mode='nearest')
        return crop(index.to(upsampled.dtype) * upsampled, *guidance.shape[-2:])
