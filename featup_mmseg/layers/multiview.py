"""FeatUp's multi-view reconstruction objective (paper sections 3.1-3.3), torch only.

An upsampler U is trained against a frozen backbone f: its high-res features of an image
x, moved by a random jitter T and downsampled by a learned D, must predict f(T(x)) —
compared through a random projection and, optionally, a learned per-pixel uncertainty.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .argument_checks import check_choice, check_int, check_number
from .code_paths import takes_cpu_path
from .downsamplers import DOWNSAMPLERS, build_downsampler


@dataclass(frozen=True)
class Jitter:
    """One view transform: reflect-pad by ``pad``, zoom (bilinear), crop the original size
    at (``top``, ``left``), flip horizontally. The same instance moves an image and its
    (image-sized) features identically."""
    pad: int
    zoom: float
    top: int
    left: int
    flip: bool

    def __post_init__(self):
        check_int('Jitter', 'pad', self.pad, minimum=0)
        check_number('Jitter', 'zoom', self.zoom, minimum=1.0)
        check_int('Jitter', 'top', self.top, minimum=0)
        check_int('Jitter', 'left', self.left, minimum=0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.pad >= min(height, width):
            raise ValueError(f'Jitter: pad {self.pad} must be smaller than the input size '
                             f'{(height, width)} for reflect padding')
        zoomed = [self._zoomed_side(n) for n in (height, width)]
        if self.top + height > zoomed[0] or self.left + width > zoomed[1]:
            raise ValueError(
                f'Jitter: a {(height, width)} crop at (top, left) = {(self.top, self.left)} '
                f'does not fit the padded and zoomed input {tuple(zoomed)}')
        # Pad, zoom, crop and flip act on rows and columns separately, and each output row
        # (column) blends at most two input rows (columns): gathering those directly
        # computes only the crop, never the padded and zoomed map around it. Channels-last
        # features are gathered as whole pixels and stay channels-last.
        channels_last = x.dim() == 4 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last)
        grid = x.permute(0, 2, 3, 1) if channels_last else x
        row_dim, column_dim = (1, 2) if channels_last else (x.dim() - 2, x.dim() - 1)
        view = self._blend(grid, row_dim, *self._taps(height, self.top, False, x))
        view = self._blend(view, column_dim, *self._taps(width, self.left, self.flip, x))
        return view.permute(0, 3, 1, 2) if channels_last else view

    def _zoomed_side(self, side: int) -> int:
        padded = side + 2 * self.pad
        return round(padded * self.zoom) if self.zoom != 1.0 else padded

    def _taps(self, side: int, offset: int, flip: bool, like: torch.Tensor):
        """(first, second input index, their weights) of the ``side`` outputs of one axis:
        reflect padding, bilinear zoom (align_corners=False, as F.interpolate to the
        rounded size), the crop from ``offset`` and the flip."""
        positions = torch.arange(side, device=like.device) + offset
        if flip:
            positions = positions.flip(0)
        padded = side + 2 * self.pad
        if self.zoom == 1.0:
            return self._reflect(positions, side), None, None, None
        # F.interpolate's source coordinate for an output size, (o + 0.5) * in / out - 0.5,
        # rounded once from the exact product as its fused multiply-add does
        scale = torch.tensor(padded, dtype=like.dtype) / self._zoomed_side(side)
        source = (scale.double() * (positions.double() + 0.5) - 0.5).to(like.dtype).clamp(min=0)
        first = source.long()
        second_weight = source - first
        second = torch.where(first < padded - 1, first + 1, first)
        return (self._reflect(first, side), self._reflect(second, side), 1 - second_weight,
                second_weight)

    def _reflect(self, padded_index: torch.Tensor, side: int) -> torch.Tensor:
        """The input index that reflect padding puts at ``padded_index``."""
        index = (padded_index - self.pad).abs()
        return torch.where(index > side - 1, 2 * (side - 1) - index, index)

    @staticmethod
    def _blend(x: torch.Tensor, dim: int, first: torch.Tensor,
               second: Optional[torch.Tensor], first_weight: Optional[torch.Tensor],
               second_weight: Optional[torch.Tensor],
               line_by_line: Optional[bool] = None) -> torch.Tensor:
        """x's entries ``first`` along ``dim``, or their blend with ``second`` by the weights;
        line by line (:class:`_LineBlend`, by default on CPU) or as full-size gathers."""
        if line_by_line if line_by_line is not None else takes_cpu_path(x.device):
            return _LineBlend.apply(x, dim, *(None if taps is None else taps.tolist()
                                              for taps in (first, second, first_weight,
                                                           second_weight)))
        # on accelerators a few full-size kernels beat a launch per line; index_select's
        # gradient is an index_add, far cheaper than advanced indexing's accumulating put
        if second is None:
            return x.index_select(dim, first)
        shape = [1] * x.dim()
        shape[dim] = -1
        return x.index_select(dim, first) * first_weight.view(shape) + \
            x.index_select(dim, second) * second_weight.view(shape)


class _LineBlend(torch.autograd.Function):
    """Output line i of ``x`` along ``dim`` (B, ..., H, W): input line ``first[i]``, or
    ``first_weight[i] * x[first[i]] + second_weight[i] * x[second[i]]``.

    On CPU, line by line: each output line is written once while its inputs are in cache,
    and the backward gathers each input line's gradient from the output lines that read it
    (mostly one or two), so neither pass fills a full-size tensor with zeros, scatters
    into it or forms full-size weighted copies: a third of the gathers' time as full-size
    index_select, products and index_add."""

    @staticmethod
    def forward(ctx, x, dim, first, second, first_weight, second_weight):
        x = x.contiguous()
        shape = list(x.shape)
        shape[dim] = len(first)
        out = x.new_empty(shape)
        for line, source in enumerate(first):
            target = out.select(dim, line)
            if second is None:
                target.copy_(x.select(dim, source))
            else:
                torch.mul(x.select(dim, source), first_weight[line], out=target)
                target.add_(x.select(dim, second[line]), alpha=second_weight[line])
        ctx.dim, ctx.input_shape = dim, x.shape
        ctx.taps = first, second, first_weight, second_weight
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        dim = ctx.dim
        first, second, first_weight, second_weight = ctx.taps
        readers = [[] for _ in range(ctx.input_shape[dim])]  # (output line, weight) per input
        for line, source in enumerate(first):
            readers[source].append((line, 1.0 if second is None else first_weight[line]))
            if second is not None:
                readers[second[line]].append((line, second_weight[line]))
        grad = grad_out.new_empty(ctx.input_shape)
        for line, line_readers in enumerate(readers):
            target = grad.select(dim, line)
            if not line_readers:
                target.zero_()
                continue
            (reader, weight), rest = line_readers[0], line_readers[1:]
            torch.mul(grad_out.select(dim, reader), weight, out=target)
            for reader, weight in rest:
                target.add_(grad_out.select(dim, reader), alpha=weight)
        return grad, None, None, None, None, None


def check_view_arguments(owner: str, max_pad: int, max_zoom: float) -> None:
    """Checks the view settings of :func:`sample_jitter`: max_pad >= 0, max_zoom >= 1."""
    check_int(owner, 'max_pad', max_pad, minimum=0)
    check_number(owner, 'max_zoom', max_zoom, minimum=1.0)


def sample_jitter(height: int, width: int, max_pad: int, max_zoom: float,
                  generator: Optional[torch.Generator] = None) -> Jitter:
    """A random :class:`Jitter`: zoom from U[1, max_zoom] and horizontal flip each with
    probability 0.5, crop offset uniform over the (zoomed) padded image."""
    check_view_arguments('sample_jitter', max_pad, max_zoom)
    if max_pad >= min(height, width):
        raise ValueError(f'max_pad {max_pad} must be smaller than the image size '
                         f'({height}, {width}) for reflect padding')

    def uniform() -> float:
        return torch.rand((), generator=generator).item()

    zoom = 1.0 + (max_zoom - 1.0) * uniform() if uniform() < 0.5 else 1.0
    padded_h = round((height + 2 * max_pad) * zoom) if zoom != 1.0 else height + 2 * max_pad
    padded_w = round((width + 2 * max_pad) * zoom) if zoom != 1.0 else width + 2 * max_pad
    top = int(uniform() * (padded_h - height + 1))
    left = int(uniform() * (padded_w - width + 1))
    return Jitter(max_pad, zoom, top, left, uniform() < 0.5)


def random_projection(batch: int, channels: int, proj_dim: int, device,
                      dtype=torch.float32) -> torch.Tensor:
    """(B, C, proj_dim) Gaussian matrix whose columns have unit norm."""
    projection = torch.randn(batch, channels, proj_dim, device=device, dtype=dtype)
    return projection / projection.norm(dim=1, keepdim=True)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertical and of horizontal neighbours."""
    return (x[..., 1:, :] - x[..., :-1, :]).square().mean() + \
        (x[..., :, 1:] - x[..., :, :-1]).square().mean()


def check_criterion_arguments(owner: str, downsampler: str, kernel_size: int, proj_dim: int,
                              tv_weight: float) -> None:
    """Checks the settings of :class:`ReconstructionCriterion`: downsampler one of
    ``DOWNSAMPLERS``, kernel_size >= 1, proj_dim >= 1 and tv_weight >= 0."""
    check_choice(owner, 'downsampler', downsampler, DOWNSAMPLERS)
    check_int(owner, 'kernel_size', kernel_size)
    check_int(owner, 'proj_dim', proj_dim)
    check_number(owner, 'tv_weight', tv_weight, minimum=0.0)


class ReconstructionCriterion(nn.Module):
    """The learned parts of the objective for one feature map of ``feat_dim`` channels:
    the downsampler D and the uncertainty network N (Conv1x1(C->1), initial weight and
    bias scaled by 0.1; named ``scale_net`` like FeatUp's).

    ``forward(hr_view, target)`` returns, for projected D(hr_view) and target,
    mean((P^T pred - P^T y)^2 / (2 s^2) + log s) with s = clamp(exp(N(y) + 0.1), 1e-4)
    (or the plain mean squared error without uncertainty), plus ``tv_weight`` times the
    total variation of the projected high-res feature magnitudes.
    """

    def __init__(self, feat_dim: int, downsampler: str = 'attention', kernel_size: int = 16,
                 proj_dim: int = 30, uncertainty: bool = True, tv_weight: float = 0.0):
        super().__init__()
        check_int('ReconstructionCriterion', 'feat_dim', feat_dim)
        check_criterion_arguments('ReconstructionCriterion', downsampler, kernel_size, proj_dim,
                                  tv_weight)
        self.proj_dim = proj_dim
        self.tv_weight = tv_weight
        self.downsampler = build_downsampler(downsampler, feat_dim, kernel_size)
        if uncertainty:
            self.scale_net = nn.Conv2d(feat_dim, 1, 1)
            with torch.no_grad():
                self.scale_net.weight.mul_(0.1)
                self.scale_net.bias.mul_(0.1)

    def forward(self, hr_view: torch.Tensor, target: torch.Tensor,
                with_tv: bool = True) -> torch.Tensor:
        batch, channels = target.shape[:2]
        pred = self.downsampler(hr_view, target.shape[-2:])
        projection = random_projection(batch, channels, self.proj_dim, target.device,
                                       target.dtype)
        error = (torch.einsum('bchw,bcd->bdhw', pred - target, projection)).square()
        if hasattr(self, 'scale_net'):
            scale = torch.exp(self.scale_net(target) + 0.1).clamp(min=1e-4)
            loss = (error / (2 * scale**2) + scale.log()).mean()
        else:
            loss = error.mean()
        if self.tv_weight and with_tv:
            magnitude = torch.einsum('bchw,bcd->bdhw', hr_view, projection).square().sum(
                1, keepdim=True)
            loss = loss + self.tv_weight * total_variation(magnitude)
        return loss


FeaturesFn = Callable[[torch.Tensor], List[torch.Tensor]]
UpsampleFn = Callable[[List[torch.Tensor], torch.Tensor], List[torch.Tensor]]


def multiview_reconstruction_loss(images: torch.Tensor, features: FeaturesFn,
                                  upsample: UpsampleFn, reconstructed: Sequence[int],
                                  criteria: Sequence[ReconstructionCriterion],
                                  num_jitters: int = 2, max_pad: int = 30,
                                  max_zoom: float = 2.0,
                                  backward_weight: Optional[float] = None) -> torch.Tensor:
    """The multi-view loss of one batch, averaged over jitters and upsampled maps.

    Args:
        images: (B, 3, H, W) normalised images.
        features: frozen backbone, images -> low-res feature maps (called without grad).
        upsample: (low-res maps, images) -> high-res versions of the maps ``reconstructed``
            indexes (resized to (H, W) here if needed); the other maps can guide them.
        reconstructed: indices of the upsampled maps among ``features``' outputs.
        criteria: one :class:`ReconstructionCriterion` per upsampled map.
        num_jitters, max_pad, max_zoom: the views, as :func:`sample_jitter`.
        backward_weight: if given, the gradients of ``backward_weight`` times the loss are
            accumulated here, view by view, so that only one view's graph is held at a
            time (the same gradients, up to float round-off, as backpropagating the
            returned loss), and the loss is returned detached.
    """
    check_int('multiview_reconstruction_loss', 'num_jitters', num_jitters)
    height, width = images.shape[-2:]
    with torch.no_grad():
        low_res = features(images)
    # channels-last: the views gather whole pixels, which the downsampler takes as they are
    # (no copy where the upsampler returns them so)
    high_res = [(hr if hr.shape[-2:] == (height, width) else F.interpolate(
        hr, (height, width), mode='bilinear', align_corners=False)).contiguous(
            memory_format=torch.channels_last) for hr in upsample(low_res, images)]
    moved = high_res if backward_weight is None else \
        [hr.detach().requires_grad_(hr.requires_grad) for hr in high_res]
    total = 0.0
    for index in range(num_jitters):
        jitter = sample_jitter(height, width, max_pad, max_zoom)
        with torch.no_grad():
            views = features(jitter(images))
        targets = [views[i] for i in reconstructed]
        view_loss = sum(
            criterion(jitter(hr), target, with_tv=index == 0)
            for criterion, hr, target in zip(criteria, moved, targets)) / (num_jitters *
                                                                           len(criteria))
        if backward_weight is not None:
            (backward_weight * view_loss).backward()
            view_loss = view_loss.detach()
        total = total + view_loss
    if backward_weight is not None:
        pairs = [(hr, leaf.grad) for hr, leaf in zip(high_res, moved) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward(*zip(*pairs))
    return total
