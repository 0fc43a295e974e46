"""Torch-only building blocks of FeatUp (no mmcv/mmseg needed): the JBU stage and stack,
and loading of FeatUp's published checkpoints."""
from .channel_norm import ChannelNorm
from .featup_checkpoint import (FeatUpWeights, build_featup_upsampler, load_state_dict_strict,
                                read_state_dict, split_featup_state_dict)
from .jbu_stack import JBUStack, stage_sizes
from .jbu_stage import RANGE_KERNELS, JBUStage

__all__ = [
    'ChannelNorm', 'FeatUpWeights', 'JBUStack', 'JBUStage', 'RANGE_KERNELS',
    'build_featup_upsampler', 'load_state_dict_strict', 'read_state_dict',
    'split_featup_state_dict', 'stage_sizes'
]
