"""AnyUp: an encoder-agnostic feature upsampler with windowed cross-attention.

Wimmer, Truong, Rakotosaona, Oechsle, Tombari, Schiele and Lenssen, "AnyUp: Universal
Feature Upsampling", ICLR 2026
(arXiv 2510.12764), reference code github.com/wimmerth/anyup. An RGB image guides the
upsampling of a low-res feature map of any backbone (any channel count C): a
feature-agnostic layer (learned basis filters, softmax over the basis, mean over the input
channels) turns the features into 128 channels whatever C is; image and features give keys,
the image gives one query per output pixel, and each output pixel is the average over the
attention heads of the attention weights applied to the raw (unprojected) low-res features
within a window of ``window_ratio`` around the pixel.

This module computes AnyUp's dense path (the authors' ``CrossAttentionBlock``) through
featup_mmseg's cross-scale neighbourhood-attention ops instead of a dense
(Ho*Wo) x (h*w) attention matrix and mask; :func:`convert_published_anyup` maps the
published checkpoints (``torch.hub.load('wimmerth/anyup', 'anyup')`` and
``'anyup_multi_backbone'``) onto it.
"""
import math
import struct
from functools import lru_cache
from numbers import Real
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import neighbourhood_attention_aggregate, neighbourhood_attention_scores
from ..argument_checks import check_int, check_size
from ..featup_checkpoint import check_state_dict_layout
from ..pooling import average_pool

OWNER = 'AnyUp'
GROUPS = 8  # GroupNorm groups in every residual block
# the parameters of the published nn.MultiheadAttention that AnyUp's output never reads
_MHA = 'cross_decode.cross_attn.attention.'
_OURS_ATTN = 'cross_decode.cross_attn.'


class _RMSNorm(nn.Module):
    """RMSNorm over the channels of a (B, C, H, W) map, with a per-channel ``weight``.

    torch.nn.RMSNorm (torch >= 2.4) with its default eps (the machine epsilon of the
    input's dtype, float32's for float16/bfloat16, which are normalised in float32).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = x if x.dtype in (torch.float32, torch.float64) else x.float()
        eps = torch.finfo(compute.dtype).eps
        normed = compute * torch.rsqrt(compute.pow(2).mean(1, keepdim=True) + eps)
        return (normed * self.weight.to(compute.dtype)[:, None, None]).to(x.dtype)


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> 1x1 conv -> GroupNorm -> SiLU -> 1x1 conv, plus a skip (a 1x1
    conv only where the channel count changes). Parameter names follow the checkpoints."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(GROUPS, in_channels), nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.GroupNorm(GROUPS, out_channels), nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 1, bias=False))
        self.shortcut = nn.Identity() if in_channels == out_channels else \
            nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.shortcut(x)


class _FeatureUnification(nn.Module):
    """AnyUp's feature-agnostic layer: (B, C, h, w) of any C -> (B, n, h, w), n basis filters.

    Every input channel is convolved with each of the n learned k x k ``basis`` filters
    (zero padding, divided by the number of in-bounds taps), the responses go through a
    softmax and are averaged. As in the authors' code the grouped convolution's output
    (channel ``c * n + j`` = channel c with filter j) is *viewed* as (n, C) before the
    softmax over the first axis and the mean over the second: for C != n that is not the
    softmax over the filter index of the paper's formula, but it is what the published
    weights were trained with, so it is reproduced exactly.
    """

    def __init__(self, num_filters: int, kernel_size: int):
        super().__init__()
        self.basis = nn.Parameter(torch.randn(num_filters, 1, kernel_size, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        # Python ints: an ONNX export must know the repeated filters' shape and the padding
        # (torch.jit.trace may hand sizes over as 0-d tensors, the parameters' on torch 2.1)
        channels, height, width = (int(n) for n in x.shape[1:])
        num_filters, _, kernel_size, _ = (int(n) for n in self.basis.shape)
        pad = kernel_size // 2
        weight = self.basis.to(x.dtype).repeat(channels, 1, 1, 1)
        responses = F.conv2d(x, weight, padding=pad, groups=channels)
        # in-bounds taps per output cell: a product of one count per axis
        rows = _in_bounds_taps(height, kernel_size, x)
        cols = _in_bounds_taps(width, kernel_size, x)
        responses = responses / (rows[:, None] * cols[None, :]).to(responses.dtype)
        mixed = responses.view(batch, num_filters, channels, height, width)
        return F.softmax(mixed, dim=1).mean(dim=2)


def _in_bounds_taps(size: int, kernel_size: int, like: torch.Tensor) -> torch.Tensor:
    """For each of ``size`` positions, how many of the k taps centred on it lie inside."""
    pos = torch.arange(size, device=like.device)
    pad = kernel_size // 2
    count = (pos + pad).clamp(max=size - 1) - (pos - pad).clamp(min=0) + 1
    return count.to(like.dtype if like.is_floating_point() else torch.float32)


class _RoPE(nn.Module):
    """AnyUp's 2-D rotary position encoding with learnable frequencies ``freqs`` (2, D).

    Pixel (i, j) of an H x W map has coordinates (i / (H - 1), j / (W - 1)) (torch.linspace
    from 0 to 1); channel c is rotated by the angle ``row * freqs[0, c] + col * freqs[1,
    c]``, channel c < D/2 paired with channel c + D/2. Initialised as the authors': rows
    drive the first half and columns the second, frequencies 100 ** linspace(0, -1, D/4)
    twice, times 2 pi.
    """

    def __init__(self, dim: int, theta: float = 100.0):
        super().__init__()
        freqs_1d = theta ** torch.linspace(0, -1, dim // 4)
        freqs_1d = torch.cat([freqs_1d, freqs_1d])
        freqs = torch.zeros(2, dim)
        freqs[0, :dim // 2] = freqs_1d
        freqs[1, dim - dim // 2:] = freqs_1d
        self.freqs = nn.Parameter(freqs * 2 * math.pi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        rows = torch.linspace(0, 1, height, device=x.device, dtype=dtype)
        cols = torch.linspace(0, 1, width, device=x.device, dtype=dtype)
        freqs = self.freqs.to(dtype)
        angle = freqs[0][:, None, None] * rows[:, None] + freqs[1][:, None, None] * cols
        first, second = x.chunk(2, dim=1)
        rotated = torch.cat([-second, first], dim=1)
        return (x * angle.cos() + rotated * angle.sin()).to(x.dtype)


class _Attention(nn.Module):
    """RMSNorms and the query/key projections of the published nn.MultiheadAttention
    (``attention.in_proj_*`` rows 0:D and D:2D). Its value projection and ``out_proj``
    are not kept: AnyUp only uses the head-averaged attention weights. The key projection
    has no bias either: a key bias adds ``q . b`` to every score of a query alike, which
    the softmax removes, so it never changes the output."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm_q = _RMSNorm(dim)
        self.norm_k = _RMSNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        # nn.MultiheadAttention's init: one Xavier-uniform (3D, D) in_proj, zero bias
        bound = math.sqrt(6.0 / (dim + 3 * dim))
        for proj in (self.q_proj, self.k_proj):
            nn.init.uniform_(proj.weight, -bound, bound)
        nn.init.zeros_(self.q_proj.bias)


class _CrossDecode(nn.Module):
    """A 3x3 conv on the queries, then windowed cross-attention (named like the
    published ``cross_decode``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv2d = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.cross_attn = _Attention(dim)


def _float32(x: float) -> float:
    """``x`` rounded to float32. A float32 +, -, * or / of float32 numbers equals the
    operation in float64 rounded to float32, so these steps reproduce float32 arithmetic."""
    return struct.unpack('f', struct.pack('f', x))[0]


@lru_cache(maxsize=64)
def _axis_bounds(size: int, input_size: int, ratio: float) -> Tuple[Tuple[int, ...], ...]:
    """Along one axis: the low-res cell each of ``size`` query pixels sits on (its window's
    centre in the neighbourhood ops) and the first and one-past-last low-res cell it may
    attend to; ratio <= 0: all cells.

    The bounds are floor(clamp(p - ratio) * h) and ceil(clamp(p + ratio) * h) with p = (i +
    1/2) / size, computed in float32 as the authors' mask is, so that the windows agree to
    the cell where a bound falls on an integer. In Python, not torch: the sizes stay Python
    ints under torch.export, whose tensors hold no values.
    """
    cells = tuple((2 * i + 1) * input_size // (2 * size) for i in range(size))
    if ratio <= 0:
        return cells, (0,) * size, (input_size,) * size
    ratio32 = _float32(ratio)
    first, end = [], []
    for i in range(size):
        pos = _float32(_float32(i + 0.5) / size)
        first.append(math.floor(_float32(min(max(_float32(pos - ratio32), 0.0), 1.0)
                                         * input_size)))
        end.append(math.ceil(_float32(min(max(_float32(pos + ratio32), 0.0), 1.0)
                                      * input_size)))
    return cells, tuple(first), tuple(end)


def _axis_radius(size: int, input_size: int, ratio: float) -> int:
    """The smallest k // 2 whose window around each query's cell holds all its allowed cells."""
    return max(max(c - f, e - 1 - c) for c, f, e in zip(*_axis_bounds(size, input_size, ratio)))


def _axis_mask(size: int, input_size: int, ratio: float, radius: int, device,
               dtype) -> torch.Tensor:
    """(k, size) additive mask: 0 where tap t of query i reads an allowed cell, -inf where
    its unclamped cell lies outside the window (this includes the taps that border='clamp'
    folds back onto the border)."""
    bounds = list(zip(*_axis_bounds(size, input_size, ratio)))
    return torch.tensor([[0.0 if first <= cell + tap < end else float('-inf')
                          for cell, first, end in bounds]
                         for tap in range(-radius, radius + 1)], dtype=dtype, device=device)


class AnyUp(nn.Module):
    """AnyUp (Wimmer et al., ICLR 2026): upsamples features of any backbone, guided by the image.

    - image encoder: 1x1 (``kernel_size``) conv 3 -> D plus two residual blocks at the full
      image resolution, then a 2-D RoPE with learnable frequencies;
    - queries: query encoder on that, average-pooled to the output size, 3x3 conv,
      RMSNorm, projection; keys: key encoder on it average-pooled to the features' size,
      concatenated with the feature-agnostic layer (+ two residual blocks) on the
      L2-normalised features, an aggregation encoder (3x3 conv, two residual blocks),
      RMSNorm, projection;
    - each output pixel: softmax of its scaled query-key products per head (head dim D /
      num_heads) over the low-res cells within ``window_ratio`` of its centre (rows
      [floor(clamp(p - r) h), ceil(clamp(p + r) h)), p = (i + 1/2) / Ho, columns alike),
      averaged over the heads and applied to the raw low-res features.

    Args:
        input_dim: channels of the guidance image (3).
        qk_dim: width D of encoders, queries and keys (a multiple of 8 and of num_heads).
        kernel_size: kernel of the image encoder's first conv (odd; reflect padding).
        kernel_size_lfu: size of the feature-agnostic layer's basis filters (odd).
        window_ratio: half-width of the attention window as a fraction of the image side;
            <= 0 means global attention (every low-res cell).
        num_heads: attention heads.
        lfu_dim: number of basis filters (default qk_dim).

    Differences from the authors' code: the attention runs on featup_mmseg's
    neighbourhood-attention ops (``border='clamp'``) with a kernel just large enough to
    hold every query's window and an additive -inf mask on the taps outside it, never a
    dense attention matrix; the result is the same up to round-off. Global attention
    (window_ratio <= 0) uses a (2 max(h, w) - 1)^2 window masked to the map, about 4x the
    dense cost. Not kept: the attention's value projection, ``out_proj`` and key bias,
    which never change the output (see :func:`convert_published_anyup`). Not supported:
    ``use_natten`` (NATTEN's approximate windows), ``init_gaussian_derivatives`` (an
    initialisation option; load a checkpoint instead), ``vis_attn`` and ``q_chunk_size``
    (the ops need no chunking) and extra ``**kwargs``.

    Forward: ``forward(image, features, output_size=None)``; image (B, input_dim, H, W),
    ImageNet-normalised; features (B, C, h, w); output_size (Ho, Wo) or an int, default the
    image's (H, W). Returns (B, C, Ho, Wo) in the features' dtype.

    ONNX: exports with both of torch's exporters (``featup_mmseg.ops.onnx_export``) at fixed
    image, feature and output sizes; only the batch can stay dynamic.
    """

    # for featup_mmseg.ops.onnx_export.export_onnx
    onnx_static_axes = dict.fromkeys(
        ('height', 'width'), 'its attention window, masks and pooling are computed from the '
        'image, feature and output sizes in Python, so an export fixes them')

    def __init__(self, input_dim: int = 3, qk_dim: int = 128, kernel_size: int = 1,
                 kernel_size_lfu: int = 5, window_ratio: float = 0.1, num_heads: int = 4,
                 lfu_dim: Optional[int] = None):
        super().__init__()
        input_dim = check_int(OWNER, 'input_dim', input_dim)
        qk_dim = check_int(OWNER, 'qk_dim', qk_dim)
        num_heads = check_int(OWNER, 'num_heads', num_heads)
        if qk_dim % GROUPS or qk_dim % num_heads:
            raise ValueError(f'{OWNER}: qk_dim must be a multiple of {GROUPS} (GroupNorm '
                             f'groups) and of num_heads = {num_heads}, got {qk_dim}')
        for name, value in (('kernel_size', kernel_size), ('kernel_size_lfu', kernel_size_lfu)):
            if check_int(OWNER, name, value) % 2 == 0:
                raise ValueError(f'{OWNER}: {name} must be an odd integer >= 1, got {value!r}')
        if isinstance(window_ratio, bool) or not isinstance(window_ratio, Real) or \
                not math.isfinite(window_ratio):
            raise ValueError(f'{OWNER}: window_ratio must be a finite number (<= 0: global '
                             f'attention), got {window_ratio!r}')
        lfu_dim = qk_dim if lfu_dim is None else check_int(OWNER, 'lfu_dim', lfu_dim)
        if lfu_dim % GROUPS:
            raise ValueError(f'{OWNER}: lfu_dim must be a multiple of {GROUPS} (GroupNorm '
                             f'groups), got {lfu_dim}')
        self.input_dim = input_dim
        self.qk_dim = qk_dim
        self.num_heads = num_heads
        self.window_ratio = float(window_ratio)

        def encoder(first: nn.Module, first_channels: int) -> nn.Sequential:
            return nn.Sequential(first, _ResBlock(first_channels, qk_dim),
                                 _ResBlock(qk_dim, qk_dim))

        def conv(in_channels: int, k: int) -> nn.Conv2d:
            return nn.Conv2d(in_channels, qk_dim, k, padding=k // 2, padding_mode='reflect',
                             bias=False)

        self.image_encoder = encoder(conv(input_dim, kernel_size), qk_dim)
        self.key_encoder = encoder(conv(qk_dim, 1), qk_dim)
        self.query_encoder = encoder(conv(qk_dim, 1), qk_dim)
        self.key_features_encoder = encoder(_FeatureUnification(lfu_dim, kernel_size_lfu),
                                            lfu_dim)
        self.cross_decode = _CrossDecode(qk_dim)
        self.aggregation = encoder(conv(2 * qk_dim, 3), qk_dim)
        self.rope = _RoPE(qk_dim)

    def check_channels(self, channels: int) -> None:
        """Features of any channel count are upsampled (the feature-agnostic layer)."""
        check_int(OWNER, 'channels', channels)

    def _check_inputs(self, image, features, output_size) -> Tuple[int, int]:
        for name, t, layout in (('image', image, f'(B, {self.input_dim}, H, W)'),
                                ('features', features, '(B, C, h, w)')):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f'{OWNER}: {name} must be a 4-D floating-point tensor '
                                 f'{layout}, got {got}')
            if min(t.shape) < 1:
                raise ValueError(f'{OWNER}: {name} must not be empty, got shape '
                                 f'{tuple(t.shape)}')
        if image.shape[1] != self.input_dim:
            raise ValueError(f'{OWNER}: image must have {self.input_dim} channels (B, '
                             f'{self.input_dim}, H, W), got shape {tuple(image.shape)}')
        if image.shape[0] != features.shape[0]:
            raise ValueError(f'{OWNER}: image and features must have the same batch size, '
                             f'got {image.shape[0]} and {features.shape[0]}')
        device = self.rope.freqs.device
        for name, t in (('image', image), ('features', features)):
            if t.device != device:
                raise ValueError(f'{OWNER}: {name} must be on the module\'s device {device}, '
                                 f'got {t.device}')
        pad = self.image_encoder[0].padding[0]
        if pad and min(image.shape[-2:]) <= pad:
            raise ValueError(f'{OWNER}: image must be larger than {pad} pixels on each side '
                             f'for kernel_size {2 * pad + 1} (reflect padding), got shape '
                             f'{tuple(image.shape)}')
        if min(features.shape[-2:]) < 2:
            raise ValueError(f'{OWNER}: features must be at least 2 x 2 (the aggregation\'s '
                             f'3x3 conv pads by reflection), got shape {tuple(features.shape)}')
        if output_size is None:
            return int(image.shape[-2]), int(image.shape[-1])
        if isinstance(output_size, torch.Size):
            output_size = tuple(output_size)
        return check_size(OWNER, 'output_size', output_size)

    def forward(self, image: torch.Tensor, features: torch.Tensor,
                output_size=None) -> torch.Tensor:
        out_size = self._check_inputs(image, features, output_size)
        low_size = tuple(features.shape[-2:])
        dtype = self.rope.freqs.dtype
        enc = self.rope(self.image_encoder(image.to(dtype)))
        queries = average_pool(self.query_encoder(enc), out_size)
        keys = average_pool(self.key_encoder(enc), low_size)
        unified = self.key_features_encoder(F.normalize(features.to(dtype), dim=1))
        keys = self.aggregation(torch.cat([keys, unified.to(keys.dtype)], dim=1))
        return self._attend(queries, keys, features)

    def _attend(self, queries: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor) -> torch.Tensor:
        block = self.cross_decode
        attn = block.cross_attn
        queries = attn.norm_q(block.conv2d(queries))
        keys = attn.norm_k(keys)
        head_dim = self.qk_dim // self.num_heads
        # nn.MultiheadAttention scales the projected queries before the products. Channels
        # moved by non-negative dims: torch.onnx's TorchScript exporter writes movedim(-1, 1)
        # as a Transpose with a negative perm, which ONNX Runtime refuses.
        queries = F.linear(queries.movedim(1, 3), attn.q_proj.weight, attn.q_proj.bias)
        queries = (queries * head_dim ** -0.5).movedim(3, 1)
        keys = F.linear(keys.movedim(1, 3), attn.k_proj.weight).movedim(3, 1)
        batch = queries.shape[0]
        # Python ints: the window and masks below are built from them (torch.jit.trace
        # would hand sizes over as 0-d tensors, the batch's included, which may stay one)
        out_h, out_w, low_h, low_w = (int(n) for n in (*queries.shape[2:], *keys.shape[2:]))
        heads = self.num_heads
        # heads are contiguous channel blocks (as in nn.MultiheadAttention), folded into the batch
        queries = queries.reshape(batch * heads, head_dim, out_h, out_w)
        keys = keys.to(queries.dtype).reshape(batch * heads, head_dim, low_h, low_w)

        ratio = self.window_ratio
        radius = max(_axis_radius(out_h, low_h, ratio), _axis_radius(out_w, low_w, ratio))
        kernel = 2 * radius + 1
        scores = neighbourhood_attention_scores(queries, keys, kernel, 1, 'clamp')
        soft_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
        row_mask = _axis_mask(out_h, low_h, ratio, radius, scores.device, soft_dtype)
        col_mask = _axis_mask(out_w, low_w, ratio, radius, scores.device, soft_dtype)
        scores = scores.to(soft_dtype).view(batch * heads, kernel, kernel, out_h, out_w)
        scores = scores + row_mask[:, None, :, None] + col_mask[None, :, None, :]
        probs = F.softmax(scores.view(batch, heads, kernel * kernel, out_h, out_w), dim=2)
        weights = probs.mean(dim=1).to(values.dtype)
        return neighbourhood_attention_aggregate(weights, values, 1, 'clamp')


def _published_shapes(model: AnyUp) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of the published checkpoint of an AnyUp built like ``model``."""
    dim = model.qk_dim
    shapes = {key: tuple(t.shape) for key, t in model.state_dict().items()
              if not key.startswith((_OURS_ATTN + 'q_proj.', _OURS_ATTN + 'k_proj.'))}
    shapes.update({_MHA + 'in_proj_weight': (3 * dim, dim), _MHA + 'in_proj_bias': (3 * dim,),
                   _MHA + 'out_proj.weight': (dim, dim), _MHA + 'out_proj.bias': (dim,)})
    return shapes


def convert_published_anyup(state_dict: Mapping[str, torch.Tensor], *, input_dim: int = 3,
                            qk_dim: int = 128, kernel_size: int = 1, kernel_size_lfu: int = 5,
                            lfu_dim: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """The published AnyUp state dict -> the state dict of :class:`AnyUp`.

    ``state_dict`` is the bare dict the authors' torch.hub entries load (``anyup_paper.pth``,
    ``anyup_multi_backbone.pth``; for a training checkpoint pass its ``['anyup']``); the
    keyword arguments describe the model it was trained as (the defaults: both releases).
    All keys are kept under their names except the attention's: ``in_proj_weight`` /
    ``in_proj_bias`` rows 0:D become ``cross_decode.cross_attn.q_proj.weight`` / ``.bias``
    and rows D:2D ``k_proj.weight``; rows 2D:3D (values), the key bias and ``out_proj.*``
    are checked and dropped, since AnyUp's output never depends on them.

    Raises:
        ValueError: "not an AnyUp checkpoint ..." listing missing, unexpected and mis-shaped
            keys (also for our own layout and other methods' checkpoints).
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f'not an AnyUp checkpoint: expected a state dict (a mapping of '
                         f'names to tensors), got {type(state_dict).__name__}')
    model = AnyUp(input_dim=input_dim, qk_dim=qk_dim, kernel_size=kernel_size,
                  kernel_size_lfu=kernel_size_lfu, lfu_dim=lfu_dim)
    notes = ["this looks like an AnyUp training checkpoint: pass its ['anyup']"] \
        if isinstance(state_dict.get('anyup'), Mapping) else []
    check_state_dict_layout(
        state_dict, _published_shapes(model),
        'not an AnyUp checkpoint in the published layout (wimmerth/anyup, '
        f'qk_dim={qk_dim}, input_dim={input_dim}, kernel_size={kernel_size}, '
        f'kernel_size_lfu={kernel_size_lfu}, lfu_dim={lfu_dim}):', notes)
    converted = {key: value for key, value in state_dict.items() if not key.startswith(_MHA)}
    weight, bias = state_dict[_MHA + 'in_proj_weight'], state_dict[_MHA + 'in_proj_bias']
    converted[_OURS_ATTN + 'q_proj.weight'] = weight[:qk_dim].clone()
    converted[_OURS_ATTN + 'q_proj.bias'] = bias[:qk_dim].clone()
    converted[_OURS_ATTN + 'k_proj.weight'] = weight[qk_dim:2 * qk_dim].clone()
    return converted
