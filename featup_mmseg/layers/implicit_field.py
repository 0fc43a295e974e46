"""Implicit FeatUp (paper sections 3.2 "Implicit" and 3.3), torch only.

The high-res features of ONE image are a function of its pixels: a small MLP of Fourier
features of each pixel's coordinates and colour, F_hr = MLP(h(e_i : e_j : x, w)) (eq. 7).
The field is fitted to the image by FeatUp's multi-view objective (paper section 3.3, the
JBU pretraining's :class:`~.multiview.ReconstructionCriterion`): rendered at the image's
size, moved by a view's jitter T and downsampled by the learned (attention) downsampler,
it must predict the frozen backbone's features of T(image), weighted by the learned
uncertainty, under a total-variation prior on its magnitudes (eq. 8). The views' features
are computed once and compressed to their top principal components; the field predicts
those coefficients and :meth:`ImplicitFeatures.query` maps them back to the backbone's
feature space, at any size::

    fitted = fit_implicit_features(image, backbone, ImplicitFitConfig.preset('fast'))
    features = fitted.query((448, 448))     # (1, C, 448, 448), the backbone's space
"""
import math
import time
from dataclasses import dataclass, fields, replace
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .argument_checks import check_choice, check_int, check_number, check_size
from .downsamplers import window_grid
from .multiview import (Jitter, ReconstructionCriterion, check_criterion_arguments,
                        check_view_arguments, sample_jitter, total_variation)

Backbone = Callable[[torch.Tensor], torch.Tensor]
Size = Union[int, Sequence[int]]

# The PCA is fitted on the first batches of views, at least this many (FeatUp's public
# implementation fits it on its first 50 views).
PCA_FIT_VIEWS = 50


@dataclass(frozen=True)
class ImplicitFitConfig:
    """Budget and model of an implicit FeatUp fit.

    The defaults are the paper's (Table 7, implicit column); ``preset('fast')`` is a CPU
    budget (see ``IMPLICIT_PRESETS``).

    Attributes:
        steps: optimisation steps (paper: 2000).
        num_jitters: views per step (paper: 10).
        num_views: jittered views computed once, from which each step draws its
            ``num_jitters`` (FeatUp's public code: 3000).
        pca_dim: principal components of the views' features the field predicts (paper:
            128, the projection dim); at most the backbone's channels.
        max_pad, max_zoom: the views, as :func:`~.multiview.sample_jitter` (paper: 30 px,
            1.8).
        downsampler, kernel_size: the learned downsampler (paper: 'attention', 29).
        uncertainty: learn the per-pixel uncertainty ("outlier detection"; paper: on).
        tv_weight: weight of the total-variation prior on the feature magnitudes (paper:
            0.05; 0 switches it off).
        color_features: Fourier features of the pixels' colours besides their coordinates
            (paper: on; off is the ablation of Figure 9).
        num_frequencies, min_frequency, max_frequency: the Fourier features' frequencies,
            log-spaced from min to max, in radians per unit of the inputs (coordinates in
            [-1, 1], colours in [0, 1]); the default's highest has a period of 3.5 px at
            224 px and of 3 % of the image's colour range.
        hidden_dim, num_layers, dropout: the MLP (paper: 3 ReLU layers with layer
            normalisation and dropout 0.1; FeatUp's public code: 128 wide).
        lr: NAdam learning rate (paper: 1e-3).
        view_batch_size: views per backbone call while computing them (memory only).
    """
    steps: int = 2000
    num_jitters: int = 10
    num_views: int = 3000
    pca_dim: int = 128
    max_pad: int = 30
    max_zoom: float = 1.8
    downsampler: str = 'attention'
    kernel_size: int = 29
    uncertainty: bool = True
    tv_weight: float = 0.05
    color_features: bool = True
    num_frequencies: int = 16
    min_frequency: float = 0.5
    max_frequency: float = 200.0
    hidden_dim: int = 128
    num_layers: int = 3
    dropout: float = 0.1
    lr: float = 1e-3
    view_batch_size: int = 16

    def __post_init__(self):
        owner = 'ImplicitFitConfig'
        for name in ('steps', 'num_jitters', 'num_views', 'pca_dim', 'num_frequencies',
                     'hidden_dim', 'num_layers', 'view_batch_size'):
            check_int(owner, name, getattr(self, name))
        check_view_arguments(owner, self.max_pad, self.max_zoom)
        check_criterion_arguments(owner, self.downsampler, self.kernel_size, self.pca_dim,
                                  self.tv_weight)
        for name in ('uncertainty', 'color_features'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'{owner}: {name} must be True or False, '
                                 f'got {getattr(self, name)!r}')
        check_number(owner, 'min_frequency', self.min_frequency, 0.0, inclusive=False)
        check_number(owner, 'max_frequency', self.max_frequency, self.min_frequency)
        check_number(owner, 'dropout', self.dropout, 0.0)
        if self.dropout >= 1:
            raise ValueError(f'{owner}: dropout must be in [0, 1), got {self.dropout!r}')
        check_number(owner, 'lr', self.lr, 0.0, inclusive=False)

    @classmethod
    def preset(cls, name: str, **overrides) -> 'ImplicitFitConfig':
        """The preset ``name`` (one of ``IMPLICIT_PRESETS``) with ``overrides`` applied."""
        check_choice('ImplicitFitConfig.preset', 'name', name, tuple(IMPLICIT_PRESETS))
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f'ImplicitFitConfig.preset: unknown settings {unknown}')
        return replace(IMPLICIT_PRESETS[name], **overrides)


IMPLICIT_PRESETS = {
    # the paper's Table 7 (implicit column)
    'paper': ImplicitFitConfig(),
    # about 2 minutes on a 2-core CPU for a small backbone at 224 px (see the README)
    'fast': ImplicitFitConfig(steps=300, num_jitters=2, num_views=200, pca_dim=32,
                              hidden_dim=64),
}


def principal_components(features: torch.Tensor,
                         num_components: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean (C,), basis (C, k)) of the pixels of (B, C, H, W) features: the mean feature
    and the top k = min(num_components, C, pixels) principal directions as orthonormal
    columns, by decreasing variance."""
    pixels = features.transpose(0, 1).flatten(1).T
    mean = pixels.mean(0)
    centred = (pixels - mean).double()
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    count = min(num_components, *pixels.shape)
    return mean, vectors[:, -count:].flip(-1).to(features.dtype)


class FeaturePCA(nn.Module):
    """The views' features <-> their top principal components: ``encode`` maps (B, C, H, W)
    features to (B, k, H, W) coefficients in units of ``scale``, the features' RMS
    deviation from their mean; ``decode`` maps back. The unit scale puts any backbone's
    features in the range of the channel-normalised ones FeatUp fits (``use_norm``), where
    the uncertainty's initial value and the TV weight are meant."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer('mean', mean)
        self.register_buffer('basis', basis)
        self.register_buffer('scale', scale)

    @classmethod
    def fit(cls, features: torch.Tensor, num_components: int) -> 'FeaturePCA':
        """The PCA of the pixels of (B, C, H, W) ``features``, as :func:`principal_components`."""
        mean, basis = principal_components(features, num_components)
        scale = (features - mean[:, None, None]).square().mean().sqrt().clamp(min=1e-12)
        return cls(mean, basis, scale)

    @property
    def dim(self) -> int:
        return self.basis.shape[1]

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return torch.einsum('bchw,ck->bkhw', features - self.mean[:, None, None],
                            self.basis / self.scale)

    def decode(self, coefficients: torch.Tensor) -> torch.Tensor:
        return torch.einsum('bkhw,ck->bchw', coefficients, self.basis * self.scale) + \
            self.mean[:, None, None]

    def decode_pixels(self, coefficients: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` of (B, N, k) pixel rows: (B, N, C)."""
        return torch.addmm(self.mean, coefficients.flatten(0, 1),
                           (self.basis * self.scale).T).view(*coefficients.shape[:2], -1)


class ImplicitFeatureField(nn.Module):
    """FeatUp's implicit network: per pixel, F = MLP(h(e_i : e_j : x, w)) (paper eq. 7).

    The input of a pixel is sin and cos of each of its inputs times each frequency w:
    its coordinates (pixel centres, in [-1, 1] along each axis, so any size and aspect
    ratio samples the same field) and, with ``color_features``, its colour, each channel
    shifted by its minimum and divided by the widest channel's range in the image that
    :meth:`set_colour_range` recorded (the fitted image's), so the fitted colours lie in
    [0, 1]. The MLP has ``num_layers`` linear layers, each after a LayerNorm, with ReLU
    and dropout between them.

    ``forward(image)`` maps a (B, 3, H, W) image to (B, out_dim, H, W) features.
    """

    def __init__(self, out_dim: int, hidden_dim: int = 128, num_layers: int = 3,
                 dropout: float = 0.1, color_features: bool = True, num_frequencies: int = 16,
                 min_frequency: float = 0.5, max_frequency: float = 200.0):
        super().__init__()
        owner = 'ImplicitFeatureField'
        out_dim = check_int(owner, 'out_dim', out_dim)
        hidden_dim = check_int(owner, 'hidden_dim', hidden_dim)
        num_layers = check_int(owner, 'num_layers', num_layers)
        num_frequencies = check_int(owner, 'num_frequencies', num_frequencies)
        min_frequency = check_number(owner, 'min_frequency', min_frequency, 0.0,
                                     inclusive=False)
        max_frequency = check_number(owner, 'max_frequency', max_frequency, min_frequency)
        if not 0 <= check_number(owner, 'dropout', dropout, 0.0) < 1:
            raise ValueError(f'{owner}: dropout must be in [0, 1), got {dropout!r}')
        self.out_dim = out_dim
        self.color_features = bool(color_features)
        self.register_buffer('frequencies', torch.logspace(
            math.log10(min_frequency), math.log10(max_frequency), num_frequencies))
        self.register_buffer('colour_low', torch.zeros(3))
        self.register_buffer('colour_high', torch.ones(3))
        widths = [2 * num_frequencies * (5 if self.color_features else 2)]
        widths += [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: List[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            if index:
                layers += [nn.ReLU(), nn.Dropout(dropout)]
            layers += [nn.LayerNorm(width_in), nn.Linear(width_in, width_out)]
        self.mlp = nn.Sequential(*layers)

    def set_colour_range(self, image: torch.Tensor) -> None:
        """Records the per-channel range of (B, 3, H, W) ``image`` as the colours' [0, 1]."""
        with torch.no_grad():
            self.colour_low.copy_(image.amin(dim=(0, 2, 3)))
            self.colour_high.copy_(image.amax(dim=(0, 2, 3)))

    def encode(self, coordinates: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        """(B, N, in_dim) Fourier features of N pixels' (N, 2) coordinates and (B, N, 3)
        colours."""
        inputs = coordinates.expand(colours.shape[0], -1, -1)
        if self.color_features:
            # One scale for every channel, the fitted image's widest channel range: a
            # channel that barely varied there (one of constant colour) is not blown up into
            # the frequencies' range by its own tiny range, where any noise in a queried
            # image would move the features. An image of one colour gives colour no weight.
            span = (self.colour_high - self.colour_low).max()
            scale = torch.where(span > 0, span, torch.full_like(span, math.inf))
            inputs = torch.cat([inputs, (colours - self.colour_low) / scale], -1)
        phases = (inputs[..., None] * self.frequencies).flatten(-2)
        return torch.cat([phases.sin(), phases.cos()], -1)

    def pixel_chunks(self, image: torch.Tensor, chunk_size: Optional[int] = None):
        """Yields (pixel slice, (B, n, out_dim) predictions) for ``chunk_size`` pixels of
        (B, 3, H, W) ``image`` at a time (all at once if None), in row-major order."""
        height, width = image.shape[-2:]
        step = height * width if chunk_size is None else \
            check_int('ImplicitFeatureField', 'chunk_size', chunk_size)
        ys = (torch.arange(height, device=image.device, dtype=image.dtype) + 0.5) * 2 / height
        xs = (torch.arange(width, device=image.device, dtype=image.dtype) + 0.5) * 2 / width
        coordinates = torch.stack(torch.meshgrid(ys - 1, xs - 1, indexing='ij'), -1)
        coordinates = coordinates.reshape(1, -1, 2)
        colours = image.flatten(2).transpose(1, 2)
        for start in range(0, height * width, step):
            pixels = slice(start, start + step)
            yield pixels, self.mlp(self.encode(coordinates[:, pixels], colours[:, pixels]))

    def forward(self, image: torch.Tensor, chunk_size: Optional[int] = None) -> torch.Tensor:
        """(B, out_dim, H, W) features of (B, 3, H, W) ``image``, computed ``chunk_size``
        pixels at a time if given (memory only)."""
        batch, _, height, width = image.shape
        chunks = [out for _, out in self.pixel_chunks(image, chunk_size)]
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, 1)
        return out.transpose(1, 2).reshape(batch, self.out_dim, height, width)


@dataclass(frozen=True)
class FitProgress:
    """Where a fit stands: ``stage`` 'views' (computing the views' backbone features) or
    'fit' (optimising), ``done`` of ``total`` views or steps, the last step's ``loss``,
    seconds elapsed in the stage and an estimate of the seconds it has left."""
    stage: str
    done: int
    total: int
    loss: Optional[float]
    elapsed: float
    remaining: float

    def __str__(self) -> str:
        loss = '' if self.loss is None else f'  loss: {self.loss:.4f}'
        return (f'implicit FeatUp {self.stage} [{self.done}/{self.total}]{loss}  '
                f'elapsed: {self.elapsed:.0f} s  left: about {self.remaining:.0f} s')


ProgressFn = Callable[[FitProgress], None]


class _Clock:
    """Progress reports of one stage, with the time left extrapolated from the rate so far."""

    def __init__(self, stage: str, total: int, progress: Optional[ProgressFn]):
        self.stage, self.total, self.progress = stage, total, progress
        self.start = time.perf_counter()

    def report(self, done: int, loss: Optional[float] = None) -> None:
        if self.progress is not None:
            elapsed = time.perf_counter() - self.start
            self.progress(FitProgress(self.stage, done, self.total, loss, elapsed,
                                      elapsed / done * (self.total - done)))


def _check_image(owner: str, image) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[:2] != (1, 3) \
            or not image.is_floating_point():
        got = (f'{tuple(image.shape)} {image.dtype}' if isinstance(image, torch.Tensor) else
               type(image).__name__)
        raise ValueError(f'{owner}: image must be a floating-point (1, 3, H, W) tensor, '
                         f'got {got}')
    _check_finite(owner, 'image', image)


def _check_finite(owner: str, name: str, t: torch.Tensor) -> None:
    bad = (~torch.isfinite(t)).sum().item()
    if bad:
        raise ValueError(f'{owner}: {name} {tuple(t.shape)} has {bad} NaN or infinite values; '
                         'fix the input (e.g. its normalisation) first')


def _backbone_features(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """backbone(images) without grad, checked to be (B, C, h, w) for (B, 3, H, W) images."""
    with torch.no_grad():
        features = backbone(images)
    if not isinstance(features, torch.Tensor) or features.dim() != 4 or \
            features.shape[0] != images.shape[0]:
        got = (tuple(features.shape) if isinstance(features, torch.Tensor) else
               type(features).__name__)
        raise ValueError(f'fit_implicit_features: backbone must map (B, 3, H, W) images to '
                         f'one (B, C, h, w) feature tensor (select a level of a multi-level '
                         f'backbone), got {got} for images of shape {tuple(images.shape)}')
    _check_finite('fit_implicit_features', "the backbone's features", features)
    return features


class ImplicitFeatures(nn.Module):
    """An implicit field fitted to one image (:func:`fit_implicit_features`), with what it
    was fitted on: query it at any size.

    Attributes:
        field: the :class:`ImplicitFeatureField`, predicting ``pca_dim`` PCA coefficients.
        criterion: the learned downsampler and uncertainty it was fitted with.
        pca: the views' :class:`FeaturePCA`.
        image: the fitted (1, 3, H, W) image; low_res: its (1, C, h, w) backbone features.
        losses: the loss of each step.
    """

    def __init__(self, field: ImplicitFeatureField, criterion: ReconstructionCriterion,
                 pca: FeaturePCA, image: torch.Tensor, low_res: torch.Tensor,
                 losses: Sequence[float] = ()):
        super().__init__()
        self.field = field
        self.criterion = criterion
        self.pca = pca
        self.register_buffer('image', image)
        self.register_buffer('low_res', low_res)
        self.losses = list(losses)

    @property
    def pca_dim(self) -> int:
        return self.pca.dim

    def query(self, size: Optional[Size] = None, image: Optional[torch.Tensor] = None,
              chunk_size: int = 1 << 16) -> torch.Tensor:
        """The field's (1, C, H, W) features in the backbone's space, at ``size`` (an int or
        (H, W); default: the fitted image's size), any size and aspect ratio.

        The pixels' colours come from ``image`` (1, 3, h, w), normalised like the fitted
        image — e.g. a higher-resolution copy of it — else from the fitted image; either is
        resized (bilinear, antialiased) to ``size`` if needed. ``chunk_size`` pixels are
        evaluated and decoded at a time into the preallocated output, so the memory beyond
        the output is that of one chunk (and the pixels' colours).
        """
        owner = 'ImplicitFeatures.query'
        size = self.image.shape[-2:] if size is None else check_size(owner, 'size', size)
        chunk_size = check_int(owner, 'chunk_size', chunk_size)
        image = self.image if image is None else image
        _check_image(owner, image)
        image = image.to(self.image)
        if tuple(image.shape[-2:]) != tuple(size):
            image = F.interpolate(image, size, mode='bilinear', align_corners=False,
                                  antialias=True)
        was_training = self.training
        self.eval()
        features = image.new_empty((1, self.pca.mean.shape[0], *size))
        rows = features.view(1, features.shape[1], -1)
        with torch.no_grad():
            for pixels, coefficients in self.field.pixel_chunks(image, chunk_size):
                rows[:, :, pixels] = self.pca.decode_pixels(coefficients).transpose(1, 2)
        self.train(was_training)
        return features

    def downsample(self, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """(B, C, h, w): backbone-space ``features`` at the fitted image's size (or a view of
        it) through the learned downsampler, in its PCA space, in eval mode."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            low = self.criterion.downsampler(self.pca.encode(features), size)
        self.train(was_training)
        return self.pca.decode(low)


def view_reconstruction_error(high_res: torch.Tensor, image: torch.Tensor, backbone: Backbone,
                              jitters: Sequence[Jitter],
                              downsample: Optional[Callable] = None) -> float:
    """Mean squared error between the backbone's features of jittered views of ``image``
    and ``high_res`` features (at the image's size) moved by the same jitters and
    downsampled to the views' grid: how well high-res features explain views of the image,
    e.g. views they were not fitted on.

    Args:
        high_res: (1, C, H, W) features of the (1, 3, H, W) ``image``.
        backbone: (B, 3, H, W) images -> (B, C, h, w) features.
        jitters: the views.
        downsample: (features, (h, w)) -> features; default area averaging
            (adaptive average pooling); e.g. :meth:`ImplicitFeatures.downsample`.
    """
    _check_image('view_reconstruction_error', image)
    if high_res.dim() != 4 or high_res.shape[0] != 1 or high_res.shape[-2:] != image.shape[-2:]:
        raise ValueError(f'view_reconstruction_error: high_res must be (1, C, H, W) at the '
                         f'image size {tuple(image.shape[-2:])}, got {tuple(high_res.shape)}')
    if not jitters:
        raise ValueError('view_reconstruction_error: jitters must not be empty')
    downsample = downsample or F.adaptive_avg_pool2d
    targets = _backbone_features(backbone, torch.cat([jitter(image) for jitter in jitters]))
    with torch.no_grad():
        predicted = downsample(torch.cat([jitter(high_res) for jitter in jitters]),
                               targets.shape[-2:])
    return (predicted - targets).square().mean().item()


def _view_coefficients(image: torch.Tensor, backbone: Backbone, jitters: Sequence[Jitter],
                       config: ImplicitFitConfig, low_res: torch.Tensor,
                       progress: Optional[ProgressFn]):
    """(targets (N, k, h, w), pca): the views' backbone features, computed in batches, as
    coefficients of a :class:`FeaturePCA` fitted on the first ``PCA_FIT_VIEWS`` or more, in
    the dtype of the image's ``low_res`` features. The views are made in that dtype too
    (torch < 2.4 has no CPU reflection padding for float16) and given to the backbone in
    the image's."""
    feature_shape = low_res.shape
    source = image.to(low_res.dtype)
    clock = _Clock('views', len(jitters), progress)
    pending: List[torch.Tensor] = []
    targets: List[torch.Tensor] = []
    pca = None
    for start in range(0, len(jitters), config.view_batch_size):
        batch = jitters[start:start + config.view_batch_size]
        views = torch.cat([jitter(source) for jitter in batch]).to(image.dtype)
        features = _backbone_features(backbone, views).to(low_res.dtype)
        if features.shape[1:] != feature_shape[1:]:
            raise ValueError(f'fit_implicit_features: the backbone gave {tuple(features.shape)} '
                             f'features for views of the image, but {tuple(feature_shape)} '
                             f'for the image itself; views must share its feature grid')
        pending.append(features)
        done = start + len(batch)
        if pca is None and (done >= PCA_FIT_VIEWS or done == len(jitters)):
            pca = FeaturePCA.fit(torch.cat(pending), config.pca_dim)
        if pca is not None:
            targets += [pca.encode(f) for f in pending]
            pending = []
        clock.report(done)
    return torch.cat(targets), pca


def fit_implicit_features(image: torch.Tensor, backbone: Backbone,
                          config: Optional[ImplicitFitConfig] = None,
                          progress: Optional[ProgressFn] = None,
                          generator: Optional[torch.Generator] = None) -> ImplicitFeatures:
    """Fits FeatUp's implicit feature field to one image (paper section 3.2).

    ``config.num_views`` jittered views of the image are drawn and run through the frozen
    backbone once; a PCA fitted on their features compresses them to ``pca_dim``
    coefficients. Each step renders the field at the image's size, applies the jitters of
    ``num_jitters`` of those views to it, and takes one NAdam step on the
    :class:`~.multiview.ReconstructionCriterion` loss (learned downsampler, learned
    uncertainty, random projections to ``pca_dim`` dims) plus ``tv_weight`` times the
    total variation of the rendered coefficients' magnitudes (eq. 8). The coefficients are
    in units of the features' RMS deviation (:class:`FeaturePCA`), so the uncertainty's
    start and the TV weight mean the same for any backbone's feature scale.

    Args:
        image: (1, 3, H, W) image, as the backbone takes it (e.g. normalised).
        backbone: frozen feature extractor (in eval mode), (B, 3, H, W) images -> (B, C, h, w)
            features; called without grad.
        config: the budget and model; default the paper's (:class:`ImplicitFitConfig`).
        progress: called with a :class:`FitProgress` after every batch of views and every
            step.
        generator: draws the views and the views of each step (the weights' initialisation,
            the dropouts and the random projections use torch's global generator).

    Returns:
        The fitted :class:`ImplicitFeatures`, in eval mode, on the image's device, in its
        dtype, except for a float16 image: float16 cannot hold the optimiser's state
        (NAdam's eps of 1e-8 rounds to 0 and the loss turns NaN), so the backbone runs on the
        float16 image and the field is fitted, and answers queries, in float32.

    Raises:
        ValueError: for a bad image, config or backbone output, or NaN or infinite values in
            the image or the backbone's features.
        FloatingPointError: if the loss stops being finite.
    """
    config = ImplicitFitConfig() if config is None else config
    if not isinstance(config, ImplicitFitConfig):
        raise ValueError(f'fit_implicit_features: config must be an ImplicitFitConfig, '
                         f'got {type(config).__name__}')
    _check_image('fit_implicit_features', image)
    height, width = image.shape[-2:]
    dtype = torch.float32 if image.dtype == torch.float16 else image.dtype
    low_res = _backbone_features(backbone, image).to(dtype)
    _, grid = window_grid((height, width), low_res.shape[-2:], config.kernel_size)
    if grid[0] < low_res.shape[-2] or grid[1] < low_res.shape[-1]:
        raise ValueError(
            f'fit_implicit_features: kernel_size {config.kernel_size} leaves {grid} windows '
            f'on the {(height, width)} image, fewer than the backbone\'s '
            f'{tuple(low_res.shape[-2:])} feature grid; use kernel_size <= '
            f'{min(height - low_res.shape[-2], width - low_res.shape[-1]) + 1}')
    jitters = [sample_jitter(height, width, config.max_pad, config.max_zoom, generator)
               for _ in range(config.num_views)]
    targets, pca = _view_coefficients(image, backbone, jitters, config, low_res, progress)
    pca_dim = pca.dim

    field = ImplicitFeatureField(pca_dim, config.hidden_dim, config.num_layers, config.dropout,
                                 config.color_features, config.num_frequencies,
                                 config.min_frequency, config.max_frequency)
    criterion = ReconstructionCriterion(pca_dim, config.downsampler, config.kernel_size,
                                        proj_dim=pca_dim, uncertainty=config.uncertainty)
    fitted = ImplicitFeatures(field, criterion, pca, image, low_res).to(image.device, dtype)
    field.set_colour_range(fitted.image)
    optimizer = torch.optim.NAdam(fitted.parameters(), lr=config.lr)
    fitted.train()
    clock = _Clock('fit', config.steps, progress)
    for step in range(1, config.steps + 1):
        high_res = field(fitted.image)
        picked = torch.randint(len(jitters), (config.num_jitters, ), generator=generator)
        views = torch.cat([jitters[index](high_res) for index in picked.tolist()])
        loss = criterion(views, targets[picked.to(targets.device)])
        if config.tv_weight:
            magnitude = torch.linalg.vector_norm(high_res, dim=1, keepdim=True)
            loss = loss + config.tv_weight * total_variation(magnitude)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(
                f'fit_implicit_features: the loss became {value} at step {step} of '
                f'{config.steps} ({image.dtype} image, fitted in {dtype}); a smaller lr or a '
                'float32 image may help')
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        fitted.losses.append(value)
        clock.report(step, value)
    optimizer.zero_grad(set_to_none=True)
    return fitted.eval()
