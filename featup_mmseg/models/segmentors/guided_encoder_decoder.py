"""EncoderDecoder that hands the normalised input image to image-guided necks."""
from typing import List

from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from torch import Tensor

from ..image_guidance import guided_segmentor_build


@MODELS.register_module()
class GuidedEncoderDecoder(EncoderDecoder):
    """mmseg's EncoderDecoder, except that a neck with ``requires_image = True`` is
    called as ``neck(features, image)``, image being the data preprocessor's output (the
    normalised batch, or the crop being inferred in slide inference). Every mode goes
    through :meth:`extract_feat`: loss, predict (whole and slide) and tensor. Takes
    EncoderDecoder's arguments; other necks are called as usual."""

    def __init__(self, *args, **kwargs):
        with guided_segmentor_build():
            super().__init__(*args, **kwargs)

    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        x = self.backbone(inputs)
        if self.with_neck:
            x = self.neck(x, inputs) if getattr(self.neck, 'requires_image', False) \
                else self.neck(x)
        return x
