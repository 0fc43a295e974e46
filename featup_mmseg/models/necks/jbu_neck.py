"""Image-guided JBU neck: FeatUp's upsampler behind any mmseg backbone."""
from typing import Optional, Sequence, Tuple, Union

from mmseg.registry import MODELS
from torch import Tensor

from ..image_guidance import backbone_level, check_built_by_guided_segmentor
from ..image_guided_upsampler import ImageGuidedUpsampler


@MODELS.register_module()
class JBUNeck(ImageGuidedUpsampler):
    """Upsamples one backbone level with FeatUp's image-guided JBU stack.

    The chosen level is (optionally channel-normalised, as FeatUp's ``use_norm``, then)
    upsampled by a :class:`~featup_mmseg.layers.JBUStack` guided by the normalised input
    image; the other levels pass through unchanged, so the decode head keeps its
    ``in_index``. Needs :class:`GuidedEncoderDecoder`, which passes the image.

    Output size, input-size checks and strict loading of FeatUp's weights
    (``init_cfg=dict(type='Pretrained', checkpoint=...)``, keys ``upsampler.*`` and
    ``norm.*``) are those of :class:`~featup_mmseg.models.ImageGuidedUpsampler`; the
    default output stride is 4.

    Args:
        in_channels: channels of the upsampled level.
        in_index: which backbone output to upsample.
        out_stride, output_size, scale_factor: the output size (one of them).
        num_stages, key_dim, radius, range_kernel: the JBU stack's (FeatUp: 4, 32, 3,
            'softmax').
        feature_norm: apply FeatUp's channel LayerNorm before upsampling.
        init_cfg: mmengine init config.
        frozen: keep the neck in eval mode without gradients (a pretrained upsampler
            under a linear probe).
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
                 init_cfg=None,
                 frozen: bool = False):
        check_built_by_guided_segmentor(type(self).__name__)
        if isinstance(in_index, bool) or not isinstance(in_index, int):
            raise ValueError(f'JBUNeck: in_index must be the index (int) of a backbone output, '
                             f'got {in_index!r}')
        super().__init__(in_channels, out_stride, output_size, scale_factor, num_stages,
                         key_dim, radius, range_kernel, feature_norm, init_cfg, frozen=frozen)
        self.in_index = in_index

    def forward(self, inputs: Sequence[Tensor], image: Tensor) -> Tuple[Tensor, ...]:
        outputs = list(inputs)
        outputs[self.in_index] = self.upsample(self.select(outputs), image)
        return tuple(outputs)

    def select(self, inputs: Sequence[Tensor]) -> Tensor:
        """The backbone level this neck upsamples, channel-normalised if configured."""
        return self.normalise(backbone_level('JBUNeck', inputs, self.in_index, self.in_channels))
