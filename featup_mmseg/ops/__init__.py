"""Window ops and the bicubic resize of featup_mmseg: compiled kernels with a pure-PyTorch
reference fallback."""
from .reference import (adaptive_conv_reference, adaptive_conv_transpose_reference,
                        bicubic_resize_reference, bicubic_resize_transpose_reference,
                        window_correlation_reference, window_cross_correlation_reference)
from .window_ops import (PADDING_MODES, adaptive_conv, adaptive_conv_transpose, bicubic_resize,
                         bicubic_resize_transpose, ext_available, use_reference_ops,
                         window_correlation, window_cross_correlation)

__all__ = [
    'PADDING_MODES', 'adaptive_conv', 'adaptive_conv_reference', 'adaptive_conv_transpose',
    'adaptive_conv_transpose_reference', 'bicubic_resize', 'bicubic_resize_reference',
    'bicubic_resize_transpose', 'bicubic_resize_transpose_reference', 'ext_available',
    'use_reference_ops', 'window_correlation', 'window_correlation_reference',
    'window_cross_correlation', 'window_cross_correlation_reference'
]
