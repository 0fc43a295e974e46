"""Torch-only building blocks of FeatUp (no mmcv/mmseg needed): the JBU stage and stack,
FeatUp's checkpoints, and the multi-view pretraining objective."""
from .channel_norm import ChannelNorm
from .code_paths import accelerator_paths
from .downsamplers import AttentionDownsampler, SimpleDownsampler, build_downsampler
from .featup_checkpoint import (FeatUpWeights, build_featup_upsampler, has_channel_norm,
                                load_state_dict_strict, read_state_dict,
                                split_featup_state_dict)
from .implicit_field import (ImplicitFeatureField, ImplicitFeatures, ImplicitFitConfig,
                             fit_implicit_features)
from .jbu_stack import JBUStack, stage_sizes
from .jbu_stage import RANGE_KERNELS, JBUStage, jbu_guidance_products
from .multiview import (Jitter, ReconstructionCriterion, multiview_reconstruction_loss,
                        sample_jitter)

__all__ = [
    'AttentionDownsampler', 'ChannelNorm', 'FeatUpWeights', 'JBUStack', 'JBUStage', 'Jitter',
    'ImplicitFeatureField', 'ImplicitFeatures', 'ImplicitFitConfig', 'fit_implicit_features',
    'RANGE_KERNELS', 'ReconstructionCriterion', 'SimpleDownsampler', 'accelerator_paths',
    'build_downsampler',
    'build_featup_upsampler', 'has_channel_norm', 'jbu_guidance_products',
    'load_state_dict_strict',
    'multiview_reconstruction_loss', 'read_state_dict', 'sample_jitter',
    'split_featup_state_dict', 'stage_sizes'
]
