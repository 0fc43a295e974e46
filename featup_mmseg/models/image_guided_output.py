"""Image-guided output upsampling: any decode head's last features, upsampled by FeatUp's
JBU stack (or AnyUp / NAF) guided by the image, then classified at the finer stride."""
from typing import Optional, Sequence, Union

from mmseg.registry import MODELS
from torch import Tensor

from .image_guided_upsampler import ImageGuidedUpsampler


@MODELS.register_module()
class ImageGuidedOutputUpsampler(ImageGuidedUpsampler):
    """FeatUp's image-guided JBU stack (or AnyUp / NAF) between a decode head and its
    classifier.

    Built by :class:`GuidedEncoderDecoder` from its ``output_upsampler`` config with
    ``in_channels`` = the decode head's ``channels``: the features the head passes to its
    1 x 1 classifier (``conv_seg``, after its dropout) are upsampled, guided by the
    normalised input image (the crop in slide inference), to ``out_stride`` (default 1:
    the image's own size), ``output_size`` or ``scale_factor``, and classified there.

    ``num_stages`` JBU stages follow the stack's geometric progression from the head's
    grid to the output: e.g. 2 for a 1/4 head (UPerNet, SegFormer) to full resolution,
    3 for a 1/8 head (PSPNet, DeepLabV3). Strict loading of FeatUp's weights as
    :class:`~featup_mmseg.models.ImageGuidedUpsampler` (the stack's final 1 x 1 fixup
    has ``channels`` x ``channels`` weights, so FeatUp's load where they match).

    ``upsampler=dict(type='AnyUp')`` or ``dict(type='NAF')`` (with their own arguments)
    replaces the JBU stack: one attention step from the head's grid to the output, guided
    by the image; AnyUp's and NAF's published weights, converted by
    ``tools/convert_attention_upsampler_checkpoint.py``, load through ``init_cfg``.

    Args:
        in_channels: set by the segmentor (the decode head's channels).
        out_stride, output_size, scale_factor: the output size (one of them).
        num_stages, key_dim, radius, range_kernel: the JBU stack's (default 2, 32, 3,
            'softmax'); not with ``upsampler``.
        feature_norm: apply FeatUp's channel LayerNorm before upsampling.
        init_cfg: mmengine init config.
        upsampler: an attention upsampler's config instead of the JBU stack.
    """
    DEFAULT_OUT_STRIDE = 1
    DEFAULT_NUM_STAGES = 2

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
                 upsampler: Optional[dict] = None):
        super().__init__(in_channels, out_stride, output_size, scale_factor, num_stages,
                         key_dim, radius, range_kernel, feature_norm, init_cfg,
                         upsampler=upsampler)

    def forward(self, features: Tensor, image: Tensor) -> Tensor:
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f'ImageGuidedOutputUpsampler: the decode head must classify '
                             f'(B, {self.in_channels}, h, w) features, got '
                             f'{tuple(features.shape)}')
        return self.upsample(self.normalise(features), image)
