"""NAF: the neighbourhood-attention-filtering feature upsampler.

Reference: "NAF: Neighborhood Attention Filtering" (CVPR 2026, arXiv 2511.18452), code at
github.com/valeoai/NAF. Written here from the method's description; only the state-dict
names follow the authors' module so that their released file loads as it is.
"""
import math
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from featup_mmseg.layers.argument_checks import check_int, check_number, check_size
from featup_mmseg.layers.featup_checkpoint import check_state_dict_layout
from featup_mmseg.layers.pooling import average_pool
from featup_mmseg.ops import neighbourhood_attention_aggregate, neighbourhood_attention_scores

__all__ = ['NAF', 'convert_published_naf']

_OWNER = 'NAF'


class _EncodingBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> GroupNorm -> SiLU -> conv, no skip connection (the
    authors' encoder builds its blocks without the residual)."""

    def __init__(self, channels: int, kernel_size: int, groups: int = 8):
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad,
                               padding_mode='reflect')
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad,
                               padding_mode='reflect')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.silu(self.norm1(x)))
        return self.conv2(F.silu(self.norm2(x)))


def _branch(channels: int, kernel_size: int, layers: int) -> nn.Sequential:
    """Image -> ``channels`` maps: a stem conv, then ``layers`` encoding blocks (indices 0,
    1, ... are the published key prefixes)."""
    stem = nn.Conv2d(3, channels, kernel_size, padding=kernel_size // 2, padding_mode='reflect')
    return nn.Sequential(stem, *[_EncodingBlock(channels, kernel_size) for _ in range(layers)])


class _AxialRoPE(nn.Module):
    """DINOv3-style rotary position encoding with fixed periods (no learned weights).

    Each of ``heads`` groups of D = dim / heads channels is rotated: channel i < D/2 pairs
    with i + D/2 under the angle ``2 pi * coord / period``, where the first D/4 pairs use the
    row coordinate and the next D/4 the column coordinate, with periods
    ``base ** (2 j / (D / 2))``, j < D/4. Coordinates are the pixel centres mapped to
    [-1, 1] separately per axis. In training mode they are multiplied by one log-uniform
    factor in [1/rescale, rescale] per forward call.
    """

    def __init__(self, dim: int, heads: int, base: float, rescale: Optional[float]):
        super().__init__()
        self.heads = heads
        self.rescale = rescale
        quarter = dim // heads // 4
        # Persistent: the published state dict holds it.
        self.register_buffer(
            'periods', base ** (2 * torch.arange(quarter, dtype=torch.float32) / (2 * quarter)))

    def _axis_angles(self, length: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
        """(D/4, length) angles for one axis."""
        coords = torch.arange(0.5, length, dtype=dtype, device=self.periods.device) / length
        coords = 2.0 * coords - 1.0
        if scale != 1.0:
            coords = coords * scale
        periods = self.periods.to(dtype)
        return 2 * math.pi * coords[None, :] / periods[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # Angles in float32 at least (float64 for float64 input) so that low-precision
        # encodings are not rotated by rounded angles.
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        scale = 1.0
        if self.training and self.rescale is not None:
            # Drawn from torch's global CPU generator on every call (reproducible with
            # torch.manual_seed on any device, no device sync).
            bound = math.log(self.rescale)
            scale = math.exp(float(torch.empty(()).uniform_(-bound, bound)))
        rows = self._axis_angles(h, scale, dtype)[:, :, None]   # (D/4, h, 1)
        cols = self._axis_angles(w, scale, dtype)[:, None, :]   # (D/4, 1, w)
        quarter = rows.shape[0]
        cos = torch.cat([rows.cos().expand(-1, -1, w), cols.cos().expand(-1, h, -1)])
        sin = torch.cat([rows.sin().expand(-1, -1, w), cols.sin().expand(-1, h, -1)])
        # (B, heads, 2 halves, D/2, h, w): half 0 pairs with half 1 channel by channel.
        x = x.to(dtype).reshape(b, self.heads, 2, 2 * quarter, h, w)
        first, second = x[:, :, 0], x[:, :, 1]
        out = torch.stack([first * cos - second * sin, second * cos + first * sin], dim=2)
        return out.reshape(b, c, h, w)


class _ImageEncoder(nn.Module):
    """Pixel branch (1x1 convs) and semantic branch (3x3 convs), concatenated on channels,
    pooled to the output size and RoPE-encoded."""

    def __init__(self, dim: int, heads_rope: int, rope_base: float,
                 rope_rescale: Optional[float], img_layers: int):
        super().__init__()
        self.encoder = _branch(dim // 2, 1, img_layers)
        self.sem_encoder = _branch(dim // 2, 3, img_layers)
        self.rope = _AxialRoPE(dim, heads_rope, rope_base, rope_rescale)

    def forward(self, image: torch.Tensor, output_size: Tuple[int, int]) -> torch.Tensor:
        ho, wo = output_size
        height, width = image.shape[-2:]
        if height > 4 * ho or width > 4 * wo:
            # Both axes are capped by the smaller of 4*Ho and 4*Wo (the authors' rule, which
            # distorts the aspect ratio for non-square outputs; kept: the model was trained so).
            size = (min(height, 4 * ho, 4 * wo), min(width, 4 * wo, 4 * ho))
            image = F.interpolate(image, size=size, mode='bilinear', align_corners=False)
        x = torch.cat([self.encoder(image), self.sem_encoder(image)], dim=1)
        x = average_pool(x, output_size)
        return self.rope(x)


class NAF(nn.Module):
    """NAF feature upsampler (Neighborhood Attention Filtering, CVPR 2026; valeoai/NAF).

    A learned image encoder gives every output pixel an encoding: two convolutional
    branches on the (possibly downsized) image, concatenated, adaptive-average-pooled to the
    output size (Ho, Wo) and RoPE-encoded. The queries are these encodings; the keys are
    them average-pooled to the features' size (h, w); the values are the raw features.
    Each output pixel attends to the ``kernel_size`` x ``kernel_size`` window of low-res
    cells around its nearest-exact cell (shifted to stay inside the map), in ``heads_attn``
    heads: head i uses the i-th slice of the encoding channels and filters the i-th
    ``C / heads_attn`` feature channels. No projections, no residual: the output is a
    convex combination of the input features, so any backbone (any C divisible by
    ``heads_attn``) can be upsampled.

    Args:
        dim: encoding channels (two branches of dim / 2 each); dim / 2 must be a multiple
            of 8 (GroupNorm groups), dim a multiple of 4 * heads_rope and of heads_attn.
        heads_attn: attention heads (the features' channels C must be divisible by it).
        heads_rope: RoPE heads (channel groups rotated alike).
        kernel_size: window size on the low-res map, odd.
        rope_base: base of the RoPE periods (the buffer ``image_encoder.rope.periods``; a
            loaded state dict's periods are what is used).
        rope_rescale: training-mode coordinate rescale bound (log-uniform in [1/r, r]) or
            None for none; must be >= 1.
        img_layers: encoding blocks per branch.

    Where this differs from the authors' code:

    - Options dropped: ``use_encoder`` (False gives a 3-channel encoding that their own RoPE
      refuses), ``return_weights`` and ``**kwargs`` (e.g. their config's unused
      ``use_semencoder``).
    - Attention runs on the low-res keys/values through featup_mmseg's cross-scale
      neighbourhood ops (no NATTEN, no upsampled keys/values). For Ho = r * h (and
      Wo = r * w) with an integer r this reads exactly what their NATTEN call with dilation r
      on nearest-exact upsampled keys/values reads. For a non-integer ratio their floored
      dilation on the upsampled map reads cells that are no window of the low-res map
      (rows repeated or skipped); here the window is the true k x k low-res window around
      the query's nearest-exact cell.
    - Low-res maps with h or w < kernel_size (NATTEN refuses them): along such an axis the
      window is the whole axis (keys/values padded to the kernel size, padded taps masked
      before the softmax); the other axis keeps its kernel_size window.
    - Output smaller than the features (Ho < h or Wo < w; their dilation would be 0): works,
      each output pixel reads the window around its nearest-exact low-res cell.
    - ``output_size`` defaults to the image size.
    - Training-mode RoPE rescale: a fresh factor on every forward call from torch's global
      CPU generator (they cache the coordinates per (h, w), so one draw is reused while the
      size stays the same). Eval mode is deterministic.
    - RoPE angles are computed in float32 (float64 for float64 encodings); theirs in
      torch's default dtype.
    - The image-resize rule is theirs: if H > 4 Ho or W > 4 Wo the image is bilinearly
      resized to (min(H, 4 Ho, 4 Wo), min(W, 4 Wo, 4 Ho)) -- both axes capped by the
      smaller bound, which changes the aspect ratio for non-square outputs. Kept, as that is
      what the released model was trained and evaluated with.

    ONNX: exports with both of torch's exporters (``featup_mmseg.ops.onnx_export``) at fixed
    image, feature and output sizes; only the batch can stay dynamic.
    """

    # for featup_mmseg.ops.onnx_export.export_onnx
    onnx_static_axes = dict.fromkeys(
        ('height', 'width'), 'its attention window, padding and pooling are computed from the '
        'image, feature and output sizes in Python, so an export fixes them')

    def __init__(self, dim: int = 256, heads_attn: int = 4, heads_rope: int = 4,
                 kernel_size: int = 9, rope_base: float = 100.0,
                 rope_rescale: Optional[float] = 2.0, img_layers: int = 2):
        super().__init__()
        dim = check_int(_OWNER, 'dim', dim)
        heads_attn = check_int(_OWNER, 'heads_attn', heads_attn)
        heads_rope = check_int(_OWNER, 'heads_rope', heads_rope)
        kernel_size = check_int(_OWNER, 'kernel_size', kernel_size)
        rope_base = check_number(_OWNER, 'rope_base', rope_base, 0.0, inclusive=False)
        if rope_rescale is not None:
            rope_rescale = check_number(_OWNER, 'rope_rescale', rope_rescale, 1.0)
        img_layers = check_int(_OWNER, 'img_layers', img_layers, minimum=0)
        if kernel_size % 2 == 0:
            raise ValueError(f'{_OWNER}: kernel_size must be odd, got {kernel_size}')
        if dim % 16:
            raise ValueError(f'{_OWNER}: dim must be a multiple of 16 (two branches of dim/2 '
                             f'channels in GroupNorm groups of 8), got {dim}')
        if dim % (4 * heads_rope):
            raise ValueError(f'{_OWNER}: dim ({dim}) must be divisible by 4 * heads_rope '
                             f'(row and column angle pairs per head), got heads_rope='
                             f'{heads_rope}')
        if dim % heads_attn:
            raise ValueError(f'{_OWNER}: dim ({dim}) must be divisible by heads_attn, got '
                             f'heads_attn={heads_attn}')
        self.dim = dim
        self.heads_attn = heads_attn
        self.kernel_size = kernel_size
        self.scale = (dim // heads_attn) ** -0.5
        self.image_encoder = _ImageEncoder(dim, heads_rope, rope_base, rope_rescale, img_layers)

    def forward(self, image: torch.Tensor, features: torch.Tensor,
                output_size: Union[int, Tuple[int, int], None] = None) -> torch.Tensor:
        """Upsample ``features`` guided by ``image``.

        Args:
            image: (B, 3, H, W) ImageNet-normalised RGB.
            features: (B, C, h, w) low-res features, C divisible by ``heads_attn``.
            output_size: (Ho, Wo) or an int for square; default (H, W).

        Returns:
            (B, C, Ho, Wo) in features' dtype.
        """
        self._check_inputs(image, features)
        output_size = check_size(_OWNER, 'output_size',
                                 tuple(image.shape[-2:]) if output_size is None
                                 else output_size)
        weight = self.image_encoder.encoder[0].weight
        encoding = self.image_encoder(image.to(weight.dtype), output_size)

        b, c = features.shape[:2]
        # Python ints: the padding and window below follow them (torch.jit.trace would
        # hand them over as 0-d tensors)
        h, w = (int(n) for n in features.shape[2:])
        n = self.heads_attn
        dtype = features.dtype
        keys = average_pool(encoding, (h, w))
        queries = encoding.to(dtype).reshape(b * n, self.dim // n, *output_size)
        keys = keys.to(dtype).reshape(b * n, self.dim // n, h, w)
        values = features.reshape(b * n, c // n, h, w)

        k = self.kernel_size
        pad_h, pad_w = max(k - h, 0), max(k - w, 0)
        if pad_h or pad_w:
            # A map shorter than the window along an axis: pad it to the kernel size so
            # that every window covers the whole axis, and mask the padded taps.
            keys = F.pad(keys, (0, pad_w, 0, pad_h))
            values = F.pad(values, (0, pad_w, 0, pad_h))
        scores = neighbourhood_attention_scores(queries, keys, k, dilation=1, border='shift')
        soft_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        scores = scores.to(soft_dtype) * self.scale
        if pad_h or pad_w:
            tap_y = torch.arange(k, device=scores.device).repeat_interleave(k)
            tap_x = torch.arange(k, device=scores.device).repeat(k)
            padded = (tap_y >= h) | (tap_x >= w)
            scores = scores.masked_fill(padded[None, :, None, None], float('-inf'))
        attn = scores.softmax(dim=1).to(dtype)
        out = neighbourhood_attention_aggregate(attn, values, dilation=1, border='shift')
        return out.reshape(b, c, *output_size)

    def check_channels(self, channels: int) -> None:
        """Refuses features of ``channels`` channels, which the heads cannot split."""
        if channels % self.heads_attn:
            raise ValueError(f'{_OWNER}: features must have a channel count C divisible by '
                             f'heads_attn={self.heads_attn} (each head filters C / heads_attn '
                             f'of them), got C = {channels}')

    def _check_inputs(self, image: torch.Tensor, features: torch.Tensor) -> None:
        for name, t, layout in (('image', image, '(B, 3, H, W)'),
                                ('features', features, '(B, C, h, w)')):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f'{_OWNER}: {name} must be a 4-D tensor {layout}, got {shape}')
            if not t.is_floating_point():
                raise ValueError(f'{_OWNER}: {name} must be a floating-point tensor, got '
                                 f'{t.dtype}')
            if min(t.shape[-2:]) < 1 or t.shape[0] < 1:
                raise ValueError(f'{_OWNER}: {name} must be non-empty, got shape '
                                 f'{tuple(t.shape)}')
        if image.shape[1] != 3:
            raise ValueError(f'{_OWNER}: image must have 3 (RGB) channels, got shape '
                             f'{tuple(image.shape)}')
        if min(image.shape[-2:]) < 2:
            raise ValueError(f'{_OWNER}: image must be at least 2 x 2 (reflect padding), got '
                             f'shape {tuple(image.shape)}')
        if image.shape[0] != features.shape[0]:
            raise ValueError(f'{_OWNER}: image and features must have the same batch size, '
                             f'got {image.shape[0]} and {features.shape[0]}')
        self.check_channels(features.shape[1])
        device = self.image_encoder.rope.periods.device
        for name, t in (('image', image), ('features', features)):
            if t.device != device:
                raise ValueError(f'{_OWNER}: {name} must be on the module\'s device {device}, '
                                 f'got {t.device}')


def _published_layout(dim: int = 256, img_layers: int = 2,
                      heads_rope: int = 4) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of the authors' NAF state dict (their defaults give the release)."""
    half = dim // 2
    layout = {}
    for branch, ks in (('encoder', 1), ('sem_encoder', 3)):
        prefix = f'image_encoder.{branch}'
        layout[f'{prefix}.0.weight'] = (half, 3, ks, ks)
        layout[f'{prefix}.0.bias'] = (half,)
        for i in range(1, img_layers + 1):
            for part in ('norm1', 'norm2'):
                layout[f'{prefix}.{i}.{part}.weight'] = (half,)
                layout[f'{prefix}.{i}.{part}.bias'] = (half,)
            for part in ('conv1', 'conv2'):
                layout[f'{prefix}.{i}.{part}.weight'] = (half, half, ks, ks)
                layout[f'{prefix}.{i}.{part}.bias'] = (half,)
    layout['image_encoder.rope.periods'] = (dim // heads_rope // 4,)
    return layout


def convert_published_naf(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The released NAF state dict (``naf_release.pth``, the bare dict valeoai/NAF's
    torch.hub entry loads) -> the state dict of ``NAF()`` with default arguments.

    Our parameter names are the published ones, so this validates (37 tensors: keys and
    shapes) and returns a new dict of the same tensors. A state dict of our ``NAF()`` has
    the same layout and passes unchanged.

    Raises:
        ValueError: not a mapping, or missing / unexpected / mis-shaped keys (all listed).
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f'not a NAF checkpoint: expected a state dict (mapping of names to '
                         f'tensors), got {type(state_dict).__name__}')
    layout = _published_layout()
    check_state_dict_layout(state_dict, layout,
                            'not a NAF checkpoint (the valeoai/NAF release layout, 37 '
                            'tensors): nothing was converted.', limit=20)
    return {key: state_dict[key] for key in layout}
