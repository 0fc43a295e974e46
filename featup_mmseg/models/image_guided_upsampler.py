"""Image-guided upsamplers as mmengine modules: FeatUp's JBU stack (or AnyUp / NAF) with
the output size, the input-size checks and the strict loading of published weights that
the JBU neck and the image-guided output upsampler share."""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import CheckpointLoader
from torch import Tensor

from ..layers import ChannelNorm, JBUStack, load_state_dict_strict, stage_sizes
from ..layers.argument_checks import check_int, check_number, check_size
from .backbone_record import trained_backbone
from .input_size import level_stride, smallest_image_side
from .upsamplers import build_attention_upsampler


class Freezable:
    """Mixin for an ``nn.Module`` that can be frozen: after :meth:`freeze` its parameters
    get no gradients and it stays in eval mode whatever ``train()`` asks (dropout off), so
    a pretrained part stays exactly as loaded while a probe trains on its outputs."""
    frozen = False

    def freeze(self) -> None:
        """Stops gradients to every parameter and keeps the module in eval mode."""
        self.frozen = True
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False if self.frozen else mode)


class StrictPretrained:
    """Mixin for an mmengine ``BaseModule``: ``init_cfg=dict(type='Pretrained',
    checkpoint=..., prefix=...)`` loads strictly (every missing, unexpected or mis-shaped
    key is reported and nothing is loaded) and records the backbone the weights were
    pretrained with (:attr:`trained_backbone`, checked by the segmentor)."""
    # the backbone the loaded weights were pretrained with (see backbone_record.py),
    # until the segmentor has compared it with its own
    trained_backbone: Optional[dict] = None

    def init_weights(self):
        """mmengine's init_weights, except that 'Pretrained' weights load strictly."""
        original = self.init_cfg
        init_cfgs = original if isinstance(original, list) else [original] if original else []
        pretrained = [cfg for cfg in init_cfgs if cfg.get('type') == 'Pretrained']
        self.init_cfg = [cfg for cfg in init_cfgs if cfg not in pretrained] or None
        try:
            super().init_weights()
        finally:
            self.init_cfg = original
        for cfg in pretrained:
            self.load_pretrained(cfg['checkpoint'], cfg.get('prefix'))

    def load_pretrained(self, checkpoint: str, prefix: Optional[str] = None) -> None:
        """Strictly loads the neck's weights from a checkpoint file or URL."""
        loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
        self.load_weights(loaded.get('state_dict', loaded), prefix, f'checkpoint {checkpoint}')
        self.trained_backbone = trained_backbone(loaded, checkpoint)

    def load_weights(self, state_dict: dict, prefix: Optional[str], source: str) -> None:
        """Strictly loads ``state_dict`` (its ``prefix``-ed keys only, if a prefix is given)."""
        if prefix:
            prefix = prefix if prefix.endswith('.') else prefix + '.'
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()
                          if k.startswith(prefix)}
        load_state_dict_strict(self, state_dict, source)


class ImageGuidedUpsampler(Freezable, StrictPretrained, BaseModule):
    """Upsamples features of ``in_channels`` with a :class:`~featup_mmseg.layers.JBUStack`
    (or, with ``upsampler=dict(type='AnyUp' | 'NAF', ...)``, that attention upsampler)
    guided by the (normalised) input image, optionally after FeatUp's channel LayerNorm.

    The output size is one of: ``out_stride`` (image size / stride, rounded up; the
    subclass's ``DEFAULT_OUT_STRIDE`` when nothing is given), ``output_size`` (fixed
    (H, W)), or ``scale_factor`` (relative to the features' size). JBU stages follow the
    stack's geometric progression; each must be larger than the radius, so images too
    small for that are refused with the smallest input image size that works. AnyUp and
    NAF go to the output size in one step.

    ``num_stages``, ``key_dim``, ``radius`` and ``range_kernel`` configure the JBU stack
    (default: the subclass's ``DEFAULT_NUM_STAGES``, 32, 3, 'softmax') and are refused
    beside ``upsampler``.

    ``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads weights strictly
    (:class:`StrictPretrained`). Its keys are ``upsampler.*`` and, with
    ``feature_norm=True``, ``norm.*``, the layout ``tools/convert_featup_checkpoint.py``
    writes from FeatUp's published checkpoints and
    ``tools/convert_attention_upsampler_checkpoint.py`` from AnyUp's and NAF's.

    ``frozen=True`` keeps the module in eval mode without gradients (:class:`Freezable`):
    a pretrained upsampler under a linear probe.
    """
    DEFAULT_OUT_STRIDE = 4
    DEFAULT_NUM_STAGES = 4
    # for featup_mmseg.ops.onnx_export.export_onnx
    onnx_static_axes = dict.fromkeys(
        ('height', 'width'), "its stages' sizes are computed from the image size in Python, "
        'so an export fixes them')

    def __init__(self,
                 in_channels: int,
                 out_stride: Optional[int] = None,
                 output_size: Optional[Union[int, Sequence[int]]] = None,
                 scale_factor: Optional[float] = None,
                 num_stages: Optional[int] = None,
                 key_dim: Optional[int] = None,
                 radius: Optional[int] = None,
                 range_kernel: Optional[str] = None,
                 feature_norm: bool = False,
                 init_cfg=None,
                 frozen: bool = False,
                 upsampler: Optional[dict] = None):
        super().__init__(init_cfg)
        name = type(self).__name__
        given = [arg for arg, value in (('out_stride', out_stride), ('output_size', output_size),
                                        ('scale_factor', scale_factor)) if value is not None]
        if len(given) > 1:
            raise ValueError(f'{name}: give one of out_stride, output_size and scale_factor, '
                             f'got {", ".join(given)}')
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'{name}: in_channels must be the channel count (int) of the '
                             f'upsampled features, got {in_channels!r}')
        self.in_channels = in_channels
        self.out_stride = self.DEFAULT_OUT_STRIDE if not given else out_stride
        if self.out_stride is not None:
            check_int(name, 'out_stride', self.out_stride)
        self.output_size = None if output_size is None else check_size(
            name, 'output_size', output_size)
        self.scale_factor = None if scale_factor is None else check_number(
            name, 'scale_factor', scale_factor, minimum=1.0)
        if feature_norm:
            self.norm = ChannelNorm(in_channels)
        jbu_args = dict(num_stages=num_stages, key_dim=key_dim, radius=radius,
                        range_kernel=range_kernel)
        if upsampler is None:
            defaults = dict(num_stages=self.DEFAULT_NUM_STAGES, key_dim=32, radius=3,
                            range_kernel='softmax')
            self.upsampler = JBUStack(in_channels, **{
                arg: defaults[arg] if value is None else value
                for arg, value in jbu_args.items()})
        else:
            given = sorted(arg for arg, value in jbu_args.items() if value is not None)
            if given:
                raise ValueError(f'{name}: {", ".join(given)} configure the JBU stack; they '
                                 'do not apply with upsampler, remove them (or the upsampler)')
            self.upsampler = build_attention_upsampler(name, upsampler, in_channels)
        if not isinstance(frozen, bool):
            raise ValueError(f'{name}: frozen must be a bool, got {frozen!r}')
        if frozen:
            self.freeze()

    def normalise(self, features: Tensor) -> Tensor:
        """The features, channel-normalised if configured."""
        return self.norm(features) if hasattr(self, 'norm') else features

    def upsample(self, features: Tensor, image: Tensor,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 output_size: Optional[Tuple[int, int]] = None) -> Tensor:
        """Upsamples features to the configured size (or ``output_size``), guided by the
        image, into a tensor of ``memory_format``."""
        image_size = tuple(int(n) for n in image.shape[-2:])
        input_size = tuple(int(n) for n in features.shape[-2:])
        if output_size is None:
            output_size = tuple(self._output_side(dim, image_size[dim], input_size[dim])
                                for dim in range(2))
        if not isinstance(self.upsampler, JBUStack):
            return self.upsampler(image, features, output_size).contiguous(
                memory_format=memory_format)
        self._check_stage_sizes(image_size, input_size, output_size)
        return self.upsampler(features, image, output_size=output_size,
                              memory_format=memory_format)

    def _output_side(self, dim: int, image_side: int, input_side: int) -> int:
        """The output height (dim 0) or width (dim 1) for these image and level sides."""
        if self.out_stride is not None:
            return math.ceil(image_side / self.out_stride)
        if self.output_size is not None:
            return self.output_size[dim]
        return int(round(input_side * self.scale_factor))

    def _check_stage_sizes(self, image_size: Tuple[int, int], input_size: Tuple[int, int],
                           output_size: Tuple[int, int]) -> None:
        """Refuses images for which a stage would be no larger than the radius, naming the
        smallest input image size that works (for the backbone stride seen here)."""
        stack = self.upsampler
        if any(out < n for out, n in zip(output_size, input_size)):
            return  # the stack names this configuration error itself
        if stack.stages_fit(input_size, output_size):
            return
        stride = level_stride(image_size, input_size)

        def fits(dim, image_side):
            input_side = math.ceil(image_side / stride)
            output_side = self._output_side(dim, image_side, input_side)
            return output_side >= input_side and stack.stages_fit((input_side, ),
                                                                  (output_side, ))

        minimum = [smallest_image_side(lambda side: fits(dim, side)) for dim in range(2)]
        sizes = stage_sizes(input_size, output_size, stack.num_stages)
        smallest = stack.min_stage_size
        stages = (f'{type(self).__name__} with radius-{stack.up1.radius} JBU stages upsamples '
                  f'{input_size} to {output_size} through {", ".join(map(str, sizes))}, but each '
                  f'stage needs at least {smallest} x {smallest}')
        if None in minimum:
            raise ValueError(f'{stages}, which no input image size gives here: use a larger '
                             'output_size or fewer num_stages')
        raise ValueError(
            f'{stages}: it needs input images of at least {minimum[0]} x {minimum[1]} px, got '
            f'{image_size[0]} x {image_size[1]}; resize or pad the inputs, or with slide '
            f'inference use a crop_size of at least {minimum[0]} x {minimum[1]}')
