"""One learned joint bilateral upsampling stage (FeatUp's JBULearnedRange, paper section 3.2)."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..ops import adaptive_conv, normalized_range_kernel, window_correlation
from ..ops.reference import range_scale, spatial_kernel, window_patches
from .argument_checks import check_choice, check_int
from .bicubic import ResizedAggregation, bicubic_resize, resized_adaptive_conv
from .code_paths import takes_cpu_path

RANGE_KERNELS = ('softmax', 'no_mlp', 'gaussian_euclidean', 'gaussian_cosine')
# FeatUp resolves window borders by reflection, in the range kernel and the aggregation.
PADDING_MODE = 'reflect'
try:  # torch >= 2.3
    from torch.compiler import is_compiling as _compiling
except ImportError:
    from torch._dynamo import is_compiling as _compiling


def recording() -> bool:
    """Whether the forward is being recorded rather than run: compiled (torch.compile, where
    the compiler chooses what to store) or traced (torch.jit.trace, e.g. by FLOP counters
    and the TorchScript ONNX exporter, which record a custom autograd.Function as an opaque
    call). Then the stages run their plain differentiable ops."""
    return _compiling() or torch.jit.is_tracing()


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (torch.is_autocast_enabled(device_type)
    is torch 2.4+)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        if device_type == 'cpu':
            return torch.is_autocast_cpu_enabled()
        return device_type == 'cuda' and torch.is_autocast_enabled()


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 ``weight`` (Cout, Cin, 1, 1) or (Cout, Cin),
    on CPU as one batched matrix product.

    The same numbers up to round-off, but on CPU several times faster, forward and
    backward, for the few-channel maps of a stage (49 or 32 channels at 128 x 128): oneDNN
    spends most of such a convolution converting layouts. Elsewhere F.conv2d itself: cuDNN
    has no such cost, and runs with the user's TF32 setting, as nn.Conv2d would. Takes
    weight slices too.
    """
    batch, channels, height, width = x.shape
    if not takes_cpu_path(x.device):
        return F.conv2d(x, weight.reshape(weight.shape[0], channels, 1, 1), bias)
    weight = weight.reshape(weight.shape[0], channels).expand(batch, -1, -1)
    flat = x.reshape(batch, channels, height * width)
    if bias is None:
        out = torch.bmm(weight, flat)
    elif autocast_enabled('cpu'):
        # bmm returns the lower precision; the bias follows it, as in conv2d
        out = torch.bmm(weight, flat)
        out = out + bias.to(out.dtype)[:, None]
    else:  # one op: the product accumulated onto the broadcast bias
        out = torch.baddbmm(bias[:, None], weight, flat)
    return out.view(batch, -1, height, width)


def residual_conv1x1(x: torch.Tensor, dropout: nn.Dropout2d, conv: nn.Conv2d, scale: float,
                     memory_format: torch.memory_format = torch.contiguous_format
                     ) -> torch.Tensor:
    """``x + scale * conv(dropout(x))`` for a 1x1 ``conv``, as one batched matrix product
    accumulated onto ``x``.

    The same numbers up to round-off, with one full-size result instead of four (the
    dropped-out copy, the convolution, its scaling, the sum), one full-size gradient
    instead of three, and a plain matrix product instead of oneDNN's layout conversions:
    for FeatUp's 384-channel fixup at 224 x 224 these were a third of its JBUStack's
    training step. Dropout2d's channel mask folds into the weight's columns,
    W @ (m * x) = (W * m) @ x, drawn with the same call on the same (B, C, 1, 1) shape as
    Dropout2d, so the same RNG state gives the same mask. Under autocast the plain form
    runs: the product would round the residual ``x`` too.

    ``memory_format=torch.channels_last`` gives a channels-last result with the
    transposition done by the matrix product (which reads its operands transposed for
    free) rather than by a copy, in the forward and in the backward, whose gradient is
    then (B, C, H, W)-contiguous again: the residual folds into the weight, (I + W) @ x.
    """
    if autocast_enabled(x.device.type) or torch.jit.is_tracing():
        return (x + scale * conv(dropout(x))).contiguous(memory_format=memory_format)
    batch, channels, height, width = x.shape
    weight = (scale * conv.weight.reshape(-1, channels)).expand(batch, -1, -1)
    if dropout.training and dropout.p > 0:
        mask = F.dropout2d(x.new_ones(batch, channels, 1, 1), dropout.p, training=True)
        weight = weight * mask.view(batch, 1, channels)
    flat = x.reshape(batch, channels, height * width)
    if memory_format == torch.channels_last:
        identity = torch.eye(channels, dtype=weight.dtype, device=weight.device)
        out = _TransposedProduct.apply(flat, weight + identity)
    else:
        out = _ResidualProduct.apply(flat, weight)
    if conv.bias is not None:
        out.add_(scale * conv.bias[:, None])
    return out.view(batch, -1, height, width)


class _ResidualProduct(torch.autograd.Function):
    """x + weight @ x for x (B, C, N) and weight (B, C, C).

    Through torch.baddbmm autograd would add x's two gradients (the residual's and the
    product's) in a third full-size tensor; here the product's gradient is accumulated
    onto the residual's directly. Made of differentiable products: gradients of any order.
    """

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(x, weight, x)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.baddbmm(grad, weight.transpose(1, 2), grad)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(grad, x.transpose(1, 2))
        return grad_x, grad_weight


class _TransposedProduct(torch.autograd.Function):
    """weight @ x for x (B, C, N) and weight (B, C, C), computed as its (B, N, C)-contiguous
    transpose: a (B, C, N) view with channels-last strides. Its gradient for x is
    (B, C, N)-contiguous whatever the layout of the incoming gradient. Made of
    differentiable products: gradients of any order."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        batch, channels, length = x.shape
        # not a view of the product's result: the caller adds the bias in place
        out = torch.empty_strided((batch, channels, length), (channels * length, 1, channels),
                                  dtype=x.dtype, device=x.device)
        torch.bmm(x.transpose(1, 2), weight.transpose(1, 2), out=out.transpose(1, 2))
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(weight.transpose(1, 2), grad)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(grad, x.transpose(1, 2))
        return grad_x, grad_weight


class JBUStage(nn.Module):
    """Upsamples ``source`` features to the size of ``guidance`` with a learned JBU.

    For guidance G (B, Cg, H, W) and source S (B, C, h, w), with k = 2 * radius + 1:

    1. keys Q = range_proj(G) (B, key_dim, H, W)
    2. range kernel R (B, k*k, H, W) over each k x k window of the keys, by
       ``range_kernel``: 'softmax' (FeatUp): softmax over taps of
       clamp(exp(range_temp), 1e-4, 1e4) * <Q_c, Q_p>; 'no_mlp': the same with Q = G and no
       range_proj; 'gaussian_euclidean': ``exp(-|Q_c - Q_p|^2 / (2 sigma_range^2))``;
       'gaussian_cosine': exp(-(1 - cos(Q_c, Q_p)) / (2 sigma_range^2)).
    3. spatial kernel exp(-(u_i^2 + u_j^2) / (2 sigma_spatial^2)), u = linspace(-1, 1, k)
    4. K = R * spatial, normalised over the taps (sum clamped at 1e-7), then
       K + 0.1 * fixup_proj([K, G]) (no renormalisation)
    5. out = adaptive_conv(bicubic(S to (H, W)), K), reflect borders: (B, C, H, W).

    Any output size works: it is the guidance's. Parameter names match FeatUp's, so its
    state_dict keys load unchanged. Dropouts act in train mode only.

    Args:
        guidance_dim: channels Cg of the guidance.
        key_dim: channels of the range keys (ignored by 'no_mlp', whose keys are G).
        radius: window radius r >= 1 (FeatUp: 3, a 7 x 7 window). The guidance must be
            larger than r in both dimensions (reflect padding): at least
            ``min_guidance_size`` pixels.
        range_kernel: one of ``RANGE_KERNELS``.
    """

    def __init__(self, guidance_dim: int, key_dim: int = 32, radius: int = 3,
                 range_kernel: str = 'softmax'):
        super().__init__()
        check_choice('JBUStage', 'range_kernel', range_kernel, RANGE_KERNELS)
        guidance_dim = check_int('JBUStage', 'guidance_dim', guidance_dim)
        key_dim = check_int('JBUStage', 'key_dim', key_dim)
        radius = check_int('JBUStage', 'radius', radius)
        self.guidance_dim = guidance_dim
        self.radius = radius
        self.kernel_size = 2 * radius + 1
        self.range_kernel_type = range_kernel
        taps = self.kernel_size**2

        if range_kernel == 'softmax' or range_kernel == 'no_mlp':
            self.range_temp = nn.Parameter(torch.tensor(0.0))
        else:
            self.sigma_range = nn.Parameter(torch.tensor(1.0))
        if range_kernel != 'no_mlp':
            self.range_proj = nn.Sequential(
                nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Dropout2d(0.1),
                nn.Conv2d(key_dim, key_dim, 1))
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(taps + guidance_dim, taps, 1), nn.GELU(), nn.Dropout2d(0.1),
            nn.Conv2d(taps, taps, 1))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    @property
    def min_guidance_size(self) -> int:
        """The smallest guidance (output) height and width: radius + 1."""
        return self.radius + 1

    def extra_repr(self) -> str:
        return (f'guidance_dim={self.guidance_dim}, radius={self.radius}, '
                f'range_kernel={self.range_kernel_type!r}')

    def spatial_kernel(self) -> torch.Tensor:
        """(1, k*k, 1, 1) Gaussian of the tap offsets, normalised to [-1, 1]."""
        return spatial_kernel(self.sigma_spatial, self.kernel_size).reshape(1, -1, 1, 1)

    def range_keys(self, guidance: torch.Tensor,
                   first_layer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, D, H, W) keys the range kernel compares: range_proj of the guidance (the
        guidance itself for 'no_mlp'), unit length for 'gaussian_cosine'.

        ``first_layer``: range_proj's first 1x1 layer applied to the guidance, where the
        caller has it already.
        """
        if self.range_kernel_type == 'no_mlp':
            keys = guidance
        else:
            first, gelu, dropout, last = self.range_proj
            if first_layer is None:
                first_layer = conv1x1(guidance, first.weight, first.bias)
            keys = conv1x1(dropout(gelu(first_layer)), last.weight, last.bias)
        if keys.dtype in (torch.float16, torch.bfloat16):
            # Under mixed precision: similarities feed a sharp softmax or exponential, and
            # the keys have few channels, so compare them in float32.
            keys = keys.float()
        if self.range_kernel_type == 'gaussian_cosine':
            keys = F.normalize(keys, dim=1)
        return keys

    @property
    def range_variant(self) -> str:
        """The fused op's variant (:data:`featup_mmseg.ops.RANGE_VARIANTS`) of this stage's
        range kernel: 'no_mlp' is FeatUp's softmax over other keys."""
        return 'softmax' if self.range_kernel_type == 'no_mlp' else self.range_kernel_type

    @property
    def range_param(self) -> nn.Parameter:
        """The range kernel's parameter: range_temp (softmax) or sigma_range (Gaussians)."""
        return self.range_temp if self.range_variant == 'softmax' else self.sigma_range

    def range_scale(self) -> torch.Tensor:
        """The range kernel's 0-dim scale: the softmax temperature
        clamp(exp(range_temp), 1e-4, 1e4), or the Gaussians' 1 / (2 sigma_range^2)."""
        return range_scale(self.range_param, self.range_variant)

    def range_kernel(self, guidance: torch.Tensor,
                     first_layer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, k*k, H, W) similarity of each guidance pixel to its window, as separate
        window ops (:meth:`kernel` runs the range kernel fused with the spatial kernel and
        the normalisation).

        ``first_layer``: as in :meth:`range_keys`.
        """
        keys = self.range_keys(guidance, first_layer)
        dots = window_correlation(keys, self.kernel_size, PADDING_MODE)
        if self.range_variant == 'softmax':
            return F.softmax(self.range_scale() * dots, dim=1)
        if self.range_kernel_type == 'gaussian_cosine':
            distance = 1 - dots
        else:  # |Q_c - Q_p|^2 = |Q_c|^2 + |Q_p|^2 - 2 <Q_c, Q_p>
            norms = keys.square().sum(1, keepdim=True)
            window_norms = window_patches(norms, self.kernel_size, PADDING_MODE)[:, 0]
            distance = (norms + window_norms - 2 * dots).clamp_min(0)
        return torch.exp(-self.range_scale() * distance)

    def guidance_projection(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(weight (n, Cg), bias (n, )) of the 1x1 layers that read the guidance itself:
        range_proj's first layer (none for 'no_mlp') and the guidance's part of
        fixup_proj's first layer, stacked in that order."""
        weights, biases = self.guidance_projection_parts()
        return _stacked(weights), _stacked(biases)

    def guidance_projection_parts(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """The weights (each (n_i, Cg)) and biases of :meth:`guidance_projection`, not yet
        stacked."""
        # fixup_proj(cat([K, G])) without the concatenation (a copy of G stored for the
        # backward): its first 1x1 conv splits over the kernel's and the guidance's
        # channels. The guidance's part and range_proj's first layer are one product:
        # one pass over the guidance, and one (B, Cg, H, W) gradient for it instead of
        # three (two and their sum).
        first = self.fixup_proj[0]
        taps = self.kernel_size**2
        weights, biases = [first.weight[:, taps:].reshape(taps, -1)], [first.bias]
        if self.range_kernel_type != 'no_mlp':
            weights.insert(0, self.range_proj[0].weight.flatten(1))
            biases.insert(0, self.range_proj[0].bias)
        return weights, biases

    def guidance_products(self, guidance: torch.Tensor) -> torch.Tensor:
        """The guidance through :meth:`guidance_projection`: (B, n, H, W)."""
        return conv1x1(guidance, *self.guidance_projection())

    def kernel(self, guidance: torch.Tensor,
               products: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, k*k, H, W) per-pixel upsampling kernel: steps 1-4 of the class docstring.

        ``products``: the guidance through :meth:`guidance_projection`, where the caller
        has it already (:func:`jbu_guidance_products`).
        """
        first, gelu, dropout, last = self.fixup_proj
        taps = self.kernel_size**2
        if products is None:
            products = self.guidance_products(guidance)
        # one split, not two slices: one op for both parts' gradients
        *range_first_layer, fixup_part = products.split(
            [products.shape[1] - taps, taps] if self.range_kernel_type != 'no_mlp' else [taps],
            dim=1)
        keys = self.range_keys(guidance, *range_first_layer)
        # range kernel (from its parameter), spatial kernel (from sigma_spatial) and the
        # normalisation as one op each way
        combined = normalized_range_kernel(keys, self.range_param, self.sigma_spatial,
                                           self.kernel_size, self.range_variant, PADDING_MODE)
        if not autocast_enabled(combined.device.type):
            # a half-precision stage compares its keys in float32 (range_kernel) and runs
            # its fixup MLP in its own dtype (under autocast, autocast chooses)
            combined = combined.to(products.dtype)
        hidden = conv1x1(combined, first.weight[:, :taps]) + fixup_part
        return torch.add(combined, conv1x1(dropout(gelu(hidden)), last.weight, last.bias),
                         alpha=0.1)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor,
                products: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``source`` upsampled to the guidance's size.

        ``products``: the guidance through :meth:`guidance_projection`, where the caller
        has it already (:func:`jbu_guidance_products`); in CPU training the backward
        recomputes it rather than have it stored.
        """
        self._check_inputs(source, guidance)
        if products is not None:
            taps = self.kernel_size**2
            keys = 0 if self.range_kernel_type == 'no_mlp' else self.range_proj[0].out_channels
            expected = (guidance.shape[0], keys + taps, *guidance.shape[-2:])
            if products.shape != expected:
                raise ValueError(f'JBUStage: products must be (B, n, H, W) = {expected} (the '
                                 'guidance through guidance_projection()), got '
                                 f'{tuple(products.shape)}')
        if recomputes_kernel(guidance):
            # CPU training: the kernel and its intermediates, a dozen (B, k*k, H, W) and
            # (B, key_dim, H, W) maps, and the guidance products are recomputed in the
            # backward instead of stored, once for both the aggregation's and the kernel's
            # own backward; the resized features are never stored (resized_adaptive_conv).
            # A few 1x1 products and elementwise steps: in a SegFormer-B1 JBU model step
            # (512 x 512, batch 2) about 200 MiB less peak memory for the intermediates,
            # 80 MiB for the kernels and products.
            return _KernelRecomputingStage.apply(self, source, guidance, products,
                                                 *self.parameters())
        training = torch.is_grad_enabled() and not recording()
        if training and takes_cpu_path(guidance.device):
            # Under autocast: only the kernel's intermediates are recomputed (the dropout
            # masks identically: the RNG state is restored).
            kernel = checkpoint(self.kernel, guidance, products, use_reentrant=False)
        else:
            # Not on a GPU: there the recomputation's launches and bookkeeping cost more
            # than its arithmetic (H100, a SegFormer-B1 JBU head's six stages: 30 ms stored,
            # 53 ms recomputed). Not while compiling or tracing (:func:`recording`).
            kernel = self.kernel(guidance, products)
        if training and (source.requires_grad or kernel.requires_grad) \
                and not autocast_enabled(source.device.type):
            # Resize and aggregate a few channels at a time: the resized features, the
            # stage's largest tensor, are never stored for the backward (nor held whole).
            # Not under autocast, whose lower precision the backward would not reproduce.
            return resized_adaptive_conv(source, kernel.to(source.dtype), PADDING_MODE)
        upsampled = bicubic_resize(source, tuple(guidance.shape[-2:]))
        # Under autocast the kernel and the resized features can come out in different
        # dtypes; the aggregation runs in the features' dtype.
        return adaptive_conv(upsampled, kernel.to(upsampled.dtype), PADDING_MODE)

    def _check_inputs(self, source: torch.Tensor, guidance: torch.Tensor) -> None:
        if source.dim() != 4 or guidance.dim() != 4:
            raise ValueError('JBUStage: source and guidance must be 4-D (B, C, H, W), got '
                             f'{tuple(source.shape)} and {tuple(guidance.shape)}')
        self._check_guidance(guidance)
        if source.shape[0] != guidance.shape[0]:
            raise ValueError(f'JBUStage: source batch {source.shape[0]} != guidance batch '
                             f'{guidance.shape[0]}')

    def _check_guidance(self, guidance: torch.Tensor) -> None:
        if guidance.dim() != 4:
            raise ValueError('JBUStage: guidance must be 4-D (B, C, H, W), got '
                             f'{tuple(guidance.shape)}')
        if guidance.shape[1] != self.guidance_dim:
            raise ValueError(f'JBUStage: guidance must have guidance_dim={self.guidance_dim} '
                             f'channels, got shape {tuple(guidance.shape)}')
        if min(guidance.shape[-2:]) < self.min_guidance_size:
            size = self.min_guidance_size
            raise ValueError(
                f'JBUStage: the guidance (the output size) must be at least {size} x {size} '
                f'for radius {self.radius} (its reflect-padded window needs more pixels than '
                f'the radius in both dimensions), got {tuple(guidance.shape[-2:])}; upsample '
                'to a larger size or use a smaller radius')


def recomputes_kernel(guidance: torch.Tensor) -> bool:
    """Whether a stage guided by ``guidance`` recomputes its kernel in the backward rather
    than storing it: CPU training, not under autocast (whose lower precision the chunked
    backward would not reproduce) and not while compiling or tracing
    (:func:`recording`)."""
    return (torch.is_grad_enabled() and takes_cpu_path(guidance.device) and not recording()
            and not autocast_enabled('cpu'))


class _KernelRecomputingStage(torch.autograd.Function):
    """A JBU stage's output, ``resized_adaptive_conv(source, stage.kernel(guidance,
    products))``, storing neither the kernel nor anything it is made of, nor the given
    products: the backward recomputes them once (the dropout masks identically, from the
    forward's RNG state), for the aggregation's backward and then the kernel's own.
    Stored: source, guidance (held by the caller's graph anyway) and the stage's
    parameters, whose gradients it returns. Gradients of any order: with create_graph the
    recomputation is differentiable, and given products' gradient reaches the guidance and
    the parameters directly (the recomputed products are a function of both).
    """

    @staticmethod
    def forward(ctx, stage, source, guidance, products, *parameters):
        ctx.stage, ctx.rng_state = stage, torch.get_rng_state()
        ctx.given_products = products is not None
        kernel = stage.kernel(guidance, products).to(source.dtype)
        ctx.aggregation = ResizedAggregation(source, kernel, PADDING_MODE)
        ctx.save_for_backward(source, guidance, *parameters)
        return ctx.aggregation.forward(source, kernel)

    @staticmethod
    def backward(ctx, grad):
        source, guidance, *parameters = ctx.saved_tensors
        needs = ctx.needs_input_grad  # stage, source, guidance, products, *parameters
        create_graph = torch.is_grad_enabled()
        if not create_graph:  # a graph of the recomputation only
            guidance = guidance.detach().requires_grad_(needs[2])
        products = None  # else computed in the kernel, from the guidance and parameters
        if ctx.given_products and not (create_graph and needs[3]):
            # recomputed, and its gradient (if it had one) returned as the input's
            with torch.no_grad():
                products = ctx.stage.guidance_products(guidance)
            products.requires_grad_(needs[3])
        candidates = (guidance, products, *parameters)
        wrt = [t is not None and need for t, need in zip(candidates, needs[2:])]
        inputs = [t for t, want in zip(candidates, wrt) if want]
        with torch.set_grad_enabled(create_graph or bool(inputs)), \
                torch.random.fork_rng(devices=[]):
            torch.set_rng_state(ctx.rng_state)
            kernel = ctx.stage.kernel(guidance, products)
        aggregated = kernel.to(source.dtype)
        grad_source, grad_kernel = ctx.aggregation.backward(
            grad, source, aggregated if create_graph else aggregated.detach(), needs[1],
            bool(inputs))
        grads = iter(torch.autograd.grad(kernel, inputs, grad_kernel.to(kernel.dtype),
                                         allow_unused=True, create_graph=create_graph)
                     if inputs else ())
        return (None, grad_source, *(next(grads) if want else None for want in wrt))


def jbu_guidance_products(stages: Sequence[JBUStage],
                          guidance: torch.Tensor) -> List[torch.Tensor]:
    """Each of ``stages``' :meth:`JBUStage.guidance_projection` of ``guidance``, as one
    matrix product; pass each to its stage's forward.

    A SegFormer head's three stages that end at the finest level share its
    (B, 256, 128, 128) guidance: one pass over it forward, and in the backward one
    gradient for it instead of one per stage and their sum. Computed outside the stages'
    recomputation (a third of the guidance's size at 256 channels), so not twice.

    Where the stages recompute their kernels in the backward (:func:`recomputes_kernel`)
    the products are not stored either: each stage recomputes its own part.
    """
    for stage in stages:
        stage._check_guidance(guidance)
    weights, biases, sizes = [], [], []
    for stage in stages:
        stage_weights, stage_biases = stage.guidance_projection_parts()
        weights += stage_weights
        biases += stage_biases
        sizes.append(sum(len(weight) for weight in stage_weights))
    # every stage's parts stacked at once: one concatenation for all weights, one for all
    # biases
    products = conv1x1(guidance, _stacked(weights), _stacked(biases))
    return list(products.split(sizes, dim=1))


def _stacked(tensors: List[torch.Tensor]) -> torch.Tensor:
    """torch.cat(tensors) (dim 0), without a copy for one tensor."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
