"""Parameters and GFLOPs of segmentors, featup_mmseg's compiled ops included.

mmengine's FlopAnalyzer traces the model and counts only operators it has a handle
for: featup_mmseg's ops (and bicubic resizing) would count as zero. This script adds
handles for them, counting one multiply-add as one FLOP like mmengine (so GFLOPs are
comparable with mmseg's and the FeatUp paper's tables):

- adaptive_conv: B * C * H * W * k*k
- window_correlation: B * D * H * W * k*k
- window_cross_correlation (SAPA's similarity; traced as the compiled
  adaptive_conv_backward_kernel): B * D * H * W * k*k
- neighbourhood_attention_scores (AnyUp's, NAF's attention logits): N * D * H * W * k*k
- neighbourhood_attention_aggregate (their weighted sums): N * C * H * W * k*k
- upsample_bicubic2d: 16 per output element (mmengine counts 4 for bilinear)

    python tools/get_flops.py [CONFIG ...] [--shape 512 512]

Without configs it reports every ADE20K config (configs/featup_segformer, featup_upernet,
featup_sem_fpn, featup_deeplabv3plus, featup_pspnet, featup_neck).
"""
import argparse
import math
from pathlib import Path

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import elementwise_flop_counter, get_shape
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import featup_mmseg.plugin  # noqa: F401  (registrations)

ROOT = Path(__file__).resolve().parents[1]
ADE20K_CONFIG_FOLDERS = ('featup_segformer', 'featup_upernet', 'featup_sem_fpn',
                         'featup_deeplabv3plus', 'featup_pspnet', 'featup_neck')


def adaptive_conv_flops(inputs, outputs):
    """features (B, C, H, W), kernel (B, k*k, H, W): one multiply-add per tap."""
    return math.prod(get_shape(inputs[0])) * get_shape(inputs[1])[1]


def correlation_flops(inputs, outputs):
    """(queries and) keys (B, D, H, W) -> logits (B, k*k, H, W): D multiply-adds per logit."""
    return math.prod(get_shape(inputs[0])) * get_shape(outputs[0])[1]


def aggregation_flops(inputs, outputs):
    """attention (N, k*k, H, W) over values (N, C, h, w) -> (N, C, H, W): one
    multiply-add per tap and output element."""
    return math.prod(get_shape(outputs[0])) * get_shape(inputs[0])[1]


def baddbmm_flops(inputs, outputs):
    """input + batch1 @ batch2 for batch1 (B, n, m), batch2 (B, m, p): B n m p multiply-adds
    (the sum with input is elementwise, as in mmengine's addmm count)."""
    return math.prod(get_shape(inputs[1])) * get_shape(inputs[2])[-1]


OP_HANDLES = {
    'featup_mmseg::adaptive_conv': adaptive_conv_flops,
    'featup_mmseg::window_correlation': correlation_flops,
    'featup_mmseg::adaptive_conv_backward_kernel': correlation_flops,
    'featup_mmseg::neighbourhood_attention_scores': correlation_flops,
    'featup_mmseg::neighbourhood_attention_aggregate': aggregation_flops,
    'aten::upsample_bicubic2d': elementwise_flop_counter(0, 16),
    # the CPU path's 1x1 convolutions with a bias (featup_mmseg.layers.jbu_stage.conv1x1)
    'aten::baddbmm': baddbmm_flops,
}


def complexity(config: str, shape, cfg_options=None) -> dict:
    """Parameters, FLOPs (multiply-adds) and the operators left uncounted."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).eval()
    if getattr(model, 'auxiliary_head', None) is not None:
        model.auxiliary_head = None  # training only
    inputs = torch.rand(1, 3, *shape)
    analyzer = FlopAnalyzer(model, inputs).set_op_handle(**OP_HANDLES)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        flops = analyzer.total()
    return {
        'params': parameter_count(model)[''],
        'flops': flops,
        'uncounted': dict(analyzer.unsupported_ops()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('configs', nargs='*', help='config files (default: the ADE20K ones)',
                        default=[str(p) for folder in ADE20K_CONFIG_FOLDERS
                                 for p in sorted((ROOT / 'configs' / folder).glob('*.py'))])
    parser.add_argument('--shape', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'),
                        help='input image size')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args()

    rows = [(Path(config).stem, complexity(config, args.shape, args.cfg_options))
            for config in args.configs]
    width = max(len(name) for name, _ in rows) + 2
    print(f'input 1 x 3 x {args.shape[0]} x {args.shape[1]}; FLOPs count multiply-adds')
    print(f'{"config":<{width}}{"params (M)":>12}{"GFLOPs":>10}')
    for name, result in rows:
        print(f'{name:<{width}}{result["params"] / 1e6:>12.3f}{result["flops"] / 1e9:>10.2f}')
    uncounted = sorted({op for _, result in rows for op in result['uncounted']})
    if uncounted:
        print('not counted (no FLOP handle; elementwise or free): ' + ', '.join(uncounted))


if __name__ == '__main__':
    main()
