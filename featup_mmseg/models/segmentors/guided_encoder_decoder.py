"""EncoderDecoder that hands the normalised input image to whatever upsamples with it:
image-guided necks and the image-guided output upsampler."""
import contextlib
from typing import List, Optional

import torch.nn as nn
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from torch import Tensor

from ...layers.jbu_stage import recording
from ..backbone_record import check_backbone_record
from ..image_guidance import guided_segmentor_build


@MODELS.register_module()
class GuidedEncoderDecoder(EncoderDecoder):
    """mmseg's EncoderDecoder, except that the input image (the data preprocessor's output:
    the normalised batch, or the crop being inferred in slide inference) reaches

    - a neck with ``requires_image = True`` (e.g. :class:`JBUNeck`), called as
      ``neck(features, image)``; other necks are called as usual;
    - with ``output_upsampler=dict(...)``: an :class:`ImageGuidedOutputUpsampler` (its
      config keys; ``type`` optional) between the decode head and its classifier. The
      features any ``BaseDecodeHead`` passes to its 1 x 1 classifier ``conv_seg`` are
      upsampled, guided by the image, and classified at the upsampler's output stride, so
      PSPNet, DeepLabV3, FCN, UPerNet, SegFormer, ... heads gain FeatUp unchanged. The
      head's parameter names are untouched (its checkpoints load); the upsampler's are
      ``output_upsampler.*``.

    Every mode passes the image: loss, predict (whole and slide) and tensor. Takes
    EncoderDecoder's arguments.
    """

    def __init__(self, *args, output_upsampler: Optional[dict] = None, **kwargs):
        with guided_segmentor_build():
            super().__init__(*args, **kwargs)
        self._guidance_image = None
        self._classified_with_image = False
        if output_upsampler is not None:
            self.output_upsampler = self._build_output_upsampler(output_upsampler)

    @property
    def with_output_upsampler(self) -> bool:
        return hasattr(self, 'output_upsampler')

    def _build_output_upsampler(self, cfg) -> nn.Module:
        head = self.decode_head
        if not isinstance(cfg, dict):
            raise ValueError('GuidedEncoderDecoder: output_upsampler must be a dict of '
                             f'ImageGuidedOutputUpsampler arguments, got {cfg!r}')
        if not isinstance(head, BaseDecodeHead) or not isinstance(
                getattr(head, 'conv_seg', None), nn.Conv2d):
            raise ValueError(
                'GuidedEncoderDecoder: output_upsampler upsamples the features a decode head '
                "passes to its 1 x 1 classifier conv_seg (mmseg's BaseDecodeHead), which "
                f'{type(head).__name__} does not have; remove output_upsampler or use a '
                'BaseDecodeHead')
        cfg = dict(cfg)
        cfg.setdefault('type', 'ImageGuidedOutputUpsampler')
        channels = head.conv_seg.in_channels
        if cfg.setdefault('in_channels', channels) != channels:
            raise ValueError(f'GuidedEncoderDecoder: output_upsampler.in_channels must be the '
                             f"decode head's channels ({channels}), got {cfg['in_channels']}; "
                             'leave it out')
        upsampler = MODELS.build(cfg)
        head.conv_seg.register_forward_pre_hook(self._upsample_before_classifier)
        return upsampler

    def _upsample_before_classifier(self, conv_seg: nn.Module, args):
        """conv_seg's forward pre-hook: its input features, upsampled by the image."""
        if self._guidance_image is None:
            raise RuntimeError(
                'GuidedEncoderDecoder: the decode head was called outside the segmentor, but '
                'its classifier input is upsampled with the input image, which only the '
                "segmentor's loss, predict and tensor modes (model(inputs, mode=...)) pass")
        self._classified_with_image = True
        return (self.output_upsampler(args[0], self._guidance_image), )

    @contextlib.contextmanager
    def _guiding_image(self, image: Tensor):
        """Makes ``image`` the output upsampler's guidance while the decode head runs."""
        if not self.with_output_upsampler:
            yield
            return
        previous, self._guidance_image = self._guidance_image, image
        self._classified_with_image = False
        try:
            yield
        finally:
            self._guidance_image = previous
        if not self._classified_with_image:
            raise RuntimeError(
                f'GuidedEncoderDecoder: the decode head {type(self.decode_head).__name__} did '
                'not classify through conv_seg, so output_upsampler was never applied; remove '
                'output_upsampler for this head')

    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        self.check_trained_backbone()
        x = self.backbone(inputs)
        if self.with_neck:
            x = self.neck(x, inputs) if getattr(self.neck, 'requires_image', False) \
                else self.neck(x)
        return x

    def check_trained_backbone(self) -> None:
        """Once per loaded upsampler checkpoint, when the weights are final (after
        init_cfg, load_from and tools' checkpoints): warns if the neck's upsampler was
        pretrained with another backbone."""
        record = getattr(self.neck, 'trained_backbone', None) if self.with_neck else None
        if record is not None and not recording():
            self.neck.trained_backbone = None
            check_backbone_record(self.backbone, record)

    def loss(self, inputs: Tensor, data_samples) -> dict:
        with self._guiding_image(inputs):
            return super().loss(inputs, data_samples)

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        with self._guiding_image(inputs):
            return super().encode_decode(inputs, batch_img_metas)

    def _forward(self, inputs: Tensor, data_samples=None) -> Tensor:
        with self._guiding_image(inputs):
            return super()._forward(inputs, data_samples)
