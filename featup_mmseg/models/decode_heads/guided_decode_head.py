"""What every decode head with guided upsampling stages shares: its upsampler config and
the input-size check that names the smallest input image its stages work on."""
from typing import List, Optional, Sequence, Tuple

import torch.nn as nn

from ..input_size import check_guide_sizes
from ..upsamplers import (checked_upsampler_config, describe_stages, is_interpolation,
                         level_stage_guides)

Guide = Tuple[str, Tuple[int, int], int]


def size_of(x) -> Tuple[int, int]:
    return tuple(int(n) for n in x.shape[-2:])


def check_levels(owner: str, in_channels, in_index) -> None:
    """Refuses ``in_channels`` and ``in_index`` that are not lists of one entry per
    selected backbone level (mmseg's BaseDecodeHead asserts it without a message)."""
    if not isinstance(in_channels, (list, tuple)) or not isinstance(in_index, (list, tuple)) \
            or len(in_channels) != len(in_index):
        raise ValueError(
            f'{owner}: in_channels {in_channels!r} and in_index {in_index!r} must be lists of '
            'equal length, one channel count per selected backbone level (e.g. '
            'in_channels=[64, 128, 320, 512], in_index=[0, 1, 2, 3])')


class GuidedDecodeHeadMixin:
    """Mixed into a ``BaseDecodeHead`` subclass (before it) whose upsampling steps are
    guided upsamplers built from ``upsampler``.

    The subclass lists, in :meth:`guides`, each map that guides a stage with the smallest
    size its stages need; ``loss`` and ``predict`` (which know the image size) and
    ``forward`` refuse inputs too small for that before any computation, naming the
    smallest input image that works. Interpolation stages need nothing.
    """

    def set_upsampler(self, upsampler) -> None:
        """Stores the checked upsampler config (FeatUp's JBU when None)."""
        self.upsampler_cfg = checked_upsampler_config(type(self).__name__, upsampler)
        self.upsampler_type = self.upsampler_cfg['type']

    @property
    def guided(self) -> bool:
        return not is_interpolation(self.upsampler_cfg)

    def guides(self, inputs) -> List[Guide]:
        """(name, (h, w), smallest side) of each map that guides a stage."""
        raise NotImplementedError

    def guided_stage(self) -> Optional[nn.Module]:
        """One of the head's stages, to describe them in errors."""
        raise NotImplementedError

    def check_input_size(self, inputs, image_size: Optional[Sequence[int]] = None) -> None:
        if self.guided:
            check_guide_sizes(type(self).__name__,
                              describe_stages(self.upsampler_cfg, self.guided_stage()),
                              self.guides(inputs), image_size)

    def loss(self, inputs, batch_data_samples, train_cfg) -> dict:
        self.check_input_size(inputs, batch_data_samples[0].metainfo.get('img_shape'))
        return super().loss(inputs, batch_data_samples, train_cfg)

    def predict(self, inputs, batch_img_metas: List[dict], test_cfg):
        self.check_input_size(inputs, batch_img_metas[0].get('img_shape'))
        return super().predict(inputs, batch_img_metas, test_cfg)


def level_guides(stages: nn.ModuleList, sizes: Sequence[Tuple[int, int]],
                 name) -> List[Guide]:
    """The guides of :func:`~featup_mmseg.models.upsamplers.build_level_stages`' stages for
    levels of ``sizes``, the smallest side each needs (largest over its stages);
    ``name(level)`` names a level in errors."""
    needed = {}
    for _, steps in level_stage_guides(stages):
        for guide, stage in steps:
            needed[guide] = max(needed.get(guide, 1), getattr(stage, 'min_guidance_size', 1))
    return [(name(level), sizes[level], side) for level, side in sorted(needed.items())]
