"""Image-guided JBU neck: FeatUp's upsampler behind any mmseg backbone."""
import math
from typing import Optional, Sequence, Tuple, Union

from mmengine.model import BaseModule
from mmengine.runner.checkpoint import CheckpointLoader
from mmseg.registry import MODELS
from torch import Tensor

from ...layers import ChannelNorm, JBUStack, load_state_dict_strict
from ..image_guidance import check_built_by_guided_segmentor


@MODELS.register_module()
class JBUNeck(BaseModule):
    """Upsamples one backbone level with FeatUp's image-guided JBU stack.

    The chosen level is (optionally channel-normalised, as FeatUp's ``use_norm``, then)
    upsampled by a :class:`~featup_mmseg.layers.JBUStack` guided by the normalised input
    image; the other levels pass through unchanged, so the decode head keeps its
    ``in_index``. Needs :class:`GuidedEncoderDecoder`, which passes the image.

    The output size is one of: ``out_stride`` (image size / stride, rounded up; default
    4 when nothing is given), ``output_size`` (fixed (H, W)), or ``scale_factor``
    (relative to the level's size). Stages follow the stack's geometric progression.

    ``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads weights strictly: every
    missing, unexpected or mis-shaped key is reported and nothing is loaded. Its keys are
    ``upsampler.*`` and, with ``feature_norm=True``, ``norm.*``, the layout
    ``tools/convert_featup_checkpoint.py`` writes from FeatUp's published checkpoints.

    Args:
        in_channels: channels of the upsampled level.
        in_index: which backbone output to upsample.
        out_stride, output_size, scale_factor: the output size, as above.
        num_stages, key_dim, radius, range_kernel: the JBU stack's (FeatUp: 4, 32, 3,
            'softmax').
        feature_norm: apply FeatUp's channel LayerNorm before upsampling.
        init_cfg: mmengine init config.
    """
    requires_image = True

    def __init__(self,
                 in_channels: int,
                 in_index: int = -1,
                 out_stride: Optional[int] = None,
                 output_size: Optional[Union[int, Sequence[int]]] = None,
                 scale_factor: Optional[float] = None,
                 num_stages: int = 4,
                 key_dim: int = 32,
                 radius: int = 3,
                 range_kernel: str = 'softmax',
                 feature_norm: bool = False,
                 init_cfg=None):
        super().__init__(init_cfg)
        check_built_by_guided_segmentor(type(self).__name__)
        given = [name for name, value in (('out_stride', out_stride), ('output_size',
                                                                       output_size),
                                          ('scale_factor', scale_factor)) if value is not None]
        if len(given) > 1:
            raise ValueError(f'JBUNeck: give one of out_stride, output_size and scale_factor, '
                             f'got {", ".join(given)}')
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'JBUNeck: in_channels must be the channel count (int) of the '
                             f'upsampled level, got {in_channels!r}')
        self.in_channels = in_channels
        self.in_index = in_index
        self.out_stride = 4 if not given else out_stride
        self.output_size = output_size
        self.scale_factor = scale_factor
        if feature_norm:
            self.norm = ChannelNorm(in_channels)
        self.upsampler = JBUStack(in_channels, num_stages=num_stages, key_dim=key_dim,
                                  radius=radius, range_kernel=range_kernel)

    def forward(self, inputs: Sequence[Tensor], image: Tensor) -> Tuple[Tensor, ...]:
        outputs = list(inputs)
        outputs[self.in_index] = self.upsample(self.select(outputs), image)
        return tuple(outputs)

    def select(self, inputs: Sequence[Tensor]) -> Tensor:
        """The backbone level this neck upsamples, channel-normalised if configured."""
        try:
            features = inputs[self.in_index]
        except IndexError:
            raise ValueError(f'JBUNeck: in_index {self.in_index} is out of range for a '
                             f'backbone with {len(inputs)} outputs') from None
        if features.shape[1] != self.in_channels:
            raise ValueError(
                f'JBUNeck: backbone output {self.in_index} has {features.shape[1]} channels '
                f'but in_channels={self.in_channels}; set neck.in_channels='
                f'{features.shape[1]}')
        return self.norm(features) if hasattr(self, 'norm') else features

    def upsample(self, features: Tensor, image: Tensor) -> Tensor:
        """Upsamples selected features to the configured size, guided by the image."""
        output_size = self.output_size
        if self.out_stride is not None:
            output_size = tuple(math.ceil(int(n) / self.out_stride) for n in image.shape[-2:])
        return self.upsampler(features, image, output_size=output_size,
                              scale_factor=self.scale_factor)

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

    def load_weights(self, state_dict: dict, prefix: Optional[str], source: str) -> None:
        """Strictly loads ``state_dict`` (its ``prefix``-ed keys only, if a prefix is given)."""
        if prefix:
            prefix = prefix if prefix.endswith('.') else prefix + '.'
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()
                          if k.startswith(prefix)}
        load_state_dict_strict(self, state_dict, source)
