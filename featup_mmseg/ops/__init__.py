"""Window ops, the fused JBU range kernel, cross-scale neighbourhood attention ops, the bicubic resize and the dropout
ops of featup_mmseg: compiled kernels with a pure-PyTorch reference fallback."""
from .dropout_ops import bernoulli_mask, masked_dot
from .reference import (adaptive_conv_reference, adaptive_conv_transpose_reference,
                        bicubic_resize_reference, bicubic_resize_transpose_reference,
                        masked_dot_reference, normalized_range_kernel_reference,
                        neighbourhood_attention_aggregate_reference,
                        neighbourhood_attention_scores_reference,
                        neighbourhood_attention_transpose_reference,
                        window_correlation_reference, window_cross_correlation_reference)
from .window_ops import (NEIGHBOURHOOD_BORDERS, PADDING_MODES, RANGE_VARIANTS, adaptive_conv,
                         adaptive_conv_transpose, bicubic_resize, bicubic_resize_transpose,
                         ext_available, neighbourhood_attention_aggregate,
                         neighbourhood_attention_scores, neighbourhood_attention_transpose,
                         normalized_range_kernel,
                         use_reference_ops, window_correlation, window_cross_correlation)

__all__ = [
    'NEIGHBOURHOOD_BORDERS', 'PADDING_MODES', 'RANGE_VARIANTS', 'adaptive_conv', 'adaptive_conv_reference',
    'adaptive_conv_transpose', 'adaptive_conv_transpose_reference', 'bernoulli_mask',
    'bicubic_resize', 'bicubic_resize_reference', 'bicubic_resize_transpose',
    'bicubic_resize_transpose_reference', 'ext_available', 'masked_dot',
    'masked_dot_reference', 'neighbourhood_attention_aggregate',
    'neighbourhood_attention_aggregate_reference', 'neighbourhood_attention_scores',
    'neighbourhood_attention_scores_reference', 'neighbourhood_attention_transpose',
    'neighbourhood_attention_transpose_reference', 'normalized_range_kernel',
    'normalized_range_kernel_reference', 'use_reference_ops', 'window_correlation',
    'window_correlation_reference', 'window_cross_correlation',
    'window_cross_correlation_reference'
]
