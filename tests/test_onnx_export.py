"""ONNX export of the window ops, the JBU layers and the mmseg models, run by ONNX Runtime.

Every test exports with torch.onnx's TorchScript exporter (dynamo=False) and, where this
torch's torch.onnx.export takes dynamo= (torch >= 2.5), with the torch.export-based one,
runs the file with a plain ONNX Runtime on CPU and compares with PyTorch: at most 1e-5
absolute for the ops and layers, 1e-4 for the segmentors (logits of magnitude ~1-10).
Dynamic axes are checked by running a second input shape.
"""
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT

from featup_mmseg.layers import JBUStack, JBUStage
from featup_mmseg.layers.attention_upsamplers import NAF, AnyUp
from featup_mmseg.layers.pooling import average_pool
from featup_mmseg.ops import (PADDING_MODES, adaptive_conv, neighbourhood_attention_aggregate,
                              neighbourhood_attention_scores, window_correlation,
                              window_cross_correlation)
from featup_mmseg.ops.onnx_export import dynamo_export_available, export_onnx

onnxruntime = pytest.importorskip('onnxruntime')

LAYER_TOLERANCE = 1e-5
MODEL_TOLERANCE = 1e-4
EXPORTERS = [
    pytest.param(False, id='torchscript'),
    pytest.param(True, id='dynamo', marks=pytest.mark.skipif(
        not dynamo_export_available(),
        reason=f'torch {torch.__version__} has no torch.onnx.export(dynamo=True) (torch >= 2.5)')),
]
RANGE_KERNELS = ['softmax', 'no_mlp', 'gaussian_euclidean', 'gaussian_cosine']


def _dynamic_args(num_inputs, axes, dynamo):
    """Export arguments marking ``axes`` of every input (and of the output) as dynamic."""
    if not axes:
        return {}
    if dynamo:
        return {'dynamic_shapes': tuple({axis: torch.export.Dim.AUTO for axis in axes}
                                        for _ in range(num_inputs))}
    names = [f'input{index}' for index in range(num_inputs)] + ['output']
    return {'dynamic_axes': {name: {axis: f'{name}_{axis}' for axis in axes}
                             for name in names}}


def _largest_difference(module, example, runs, dynamo, tmp_path, dynamic_axes=()):
    """Exports ``module`` at the ``example`` inputs, runs ONNX Runtime on each tuple of
    inputs in ``runs`` and returns the largest |ONNX Runtime - PyTorch| over them."""
    path = str(tmp_path / 'model.onnx')
    names = [f'input{index}' for index in range(len(example))]
    export_onnx(module, example, path, dynamo=dynamo, input_names=names,
                output_names=['output'], opset_version=None if dynamo else 17,
                **_dynamic_args(len(example), dynamic_axes, dynamo))
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    assert {node.domain for node in _onnx_nodes(path)} <= {'', 'ai.onnx'}
    largest = 0.0
    for inputs in runs:
        with torch.no_grad():
            expected = module(*inputs).numpy()
        actual = session.run(['output'], dict(zip(names, (t.numpy() for t in inputs))))[0]
        assert actual.shape == expected.shape
        largest = max(largest, float(np.abs(actual - expected).max()))
    return largest


def _onnx_nodes(path):
    import onnx
    model = onnx.load(path)
    return [*model.graph.node, *(n for f in model.functions for n in f.node)]


# ----------------------------------------------------------------------------------------
# the ops, translated into standard ONNX

class _AllOps(torch.nn.Module):
    """The three translated ops on (x, kernel, keys), their outputs joined on channels."""

    def __init__(self, kernel_size, padding_mode):
        super().__init__()
        self.kernel_size = kernel_size
        self.padding_mode = padding_mode

    def forward(self, x, kernel, keys):
        k, mode = self.kernel_size, self.padding_mode
        return torch.cat([window_correlation(x, k, mode),
                          window_cross_correlation(x, keys, k, mode),
                          adaptive_conv(x, kernel, mode)], dim=1)


def _op_inputs(batch, height, width, kernel_size, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, height, width, generator=gen),
            torch.randn(batch, kernel_size**2, height, width, generator=gen),
            torch.randn(batch, 3, height, width, generator=gen))


@pytest.mark.parametrize('dynamo', EXPORTERS)
@pytest.mark.parametrize('padding_mode', PADDING_MODES)
def test_ops_match_onnx_runtime_in_every_padding_mode(padding_mode, dynamo, tmp_path):
    kernel_size = 5  # a wide window on a small, non-square map: every border case occurs
    module = _AllOps(kernel_size, padding_mode)
    example = _op_inputs(2, 6, 9, kernel_size, seed=0)
    other = _op_inputs(3, 7, 5, kernel_size, seed=1)  # dynamic batch, height, width
    difference = _largest_difference(module, example, [example, other], dynamo, tmp_path,
                                     dynamic_axes=(0, 2, 3))
    assert difference <= LAYER_TOLERANCE


def test_translation_tells_padding_modes_and_taps_apart(tmp_path):
    """The border modes differ on these inputs, so a wrong mode or tap order would show."""
    example = _op_inputs(1, 5, 6, 3, seed=2)[:2]
    outputs = {mode: adaptive_conv(*example, padding_mode=mode) for mode in PADDING_MODES}
    assert all((outputs[a] - outputs[b]).abs().max() > 0.1
               for a in PADDING_MODES for b in PADDING_MODES if a != b)
    transposed = example[1].view(1, 3, 3, 5, 6).transpose(1, 2).reshape(1, 9, 5, 6)
    assert (adaptive_conv(example[0], transposed) - outputs['reflect']).abs().max() > 0.1


def test_importing_the_export_module_loads_no_onnx_package():
    # On torch 2.1, torch._dynamo (imported by the ops) loads onnxscript and onnxruntime
    # where they are installed: compare with what the ops themselves load
    code = ('import sys, featup_mmseg.ops; before = set(sys.modules); '
            'import featup_mmseg.ops.onnx_export; '
            'print(sorted(m for m in ("onnx", "onnxscript", "onnxruntime") '
            'if m in set(sys.modules) - before))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert result.stdout.strip() == '[]'


# ----------------------------------------------------------------------------------------
# layers

@pytest.mark.parametrize('dynamo', EXPORTERS)
@pytest.mark.parametrize('range_kernel', RANGE_KERNELS)
def test_jbu_stage_with_every_range_kernel(range_kernel, dynamo, tmp_path):
    torch.manual_seed(0)
    stage = JBUStage(guidance_dim=6, key_dim=4, radius=2, range_kernel=range_kernel).eval()
    with torch.no_grad():  # a visible temperature and sigmas, as after training
        for name, param in stage.named_parameters():
            if param.dim() == 0:
                param.fill_(0.7)
    example = (torch.randn(2, 5, 4, 6), torch.randn(2, 6, 9, 13))
    other = (torch.randn(3, 5, 5, 5), torch.randn(3, 6, 11, 8))
    difference = _largest_difference(stage, example, [example, other], dynamo, tmp_path,
                                     dynamic_axes=(0, 2, 3))
    assert difference <= LAYER_TOLERANCE


class _StackTo(torch.nn.Module):
    def __init__(self, stack, output_size):
        super().__init__()
        self.stack = stack
        self.output_size = output_size

    def forward(self, source, image):
        return self.stack(source, image, output_size=self.output_size)


@pytest.mark.parametrize('dynamo', EXPORTERS)
def test_jbu_stack_at_a_non_x2_output_size(dynamo, tmp_path):
    torch.manual_seed(0)
    # 5 x 7 -> 11 x 14 -> 23 x 30: stage sizes that do not divide the image's
    module = _StackTo(JBUStack(feat_dim=4, num_stages=2, key_dim=4), (23, 30)).eval()
    example = (torch.randn(2, 4, 5, 7), torch.randn(2, 3, 45, 61))
    other = (torch.randn(1, 4, 5, 7), torch.randn(1, 3, 45, 61))
    difference = _largest_difference(module, example, [example, other], dynamo, tmp_path,
                                     dynamic_axes=(0, ))
    assert difference <= LAYER_TOLERANCE


@pytest.mark.parametrize('shape, size', [((2, 3, 45, 61), (11, 14)), ((1, 2, 9, 10), (4, 10)),
                                         ((1, 1, 8, 6), (4, 3))])
def test_average_pool_is_adaptive_average_pooling(shape, size):
    image = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(average_pool(image, size),
                               torch.nn.functional.adaptive_avg_pool2d(image, size),
                               rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------
# mmseg models in tensor mode

class _TensorMode(torch.nn.Module):
    """``segmentor(inputs, mode='tensor')`` as a module of one tensor input."""

    def __init__(self, segmentor):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, inputs):
        return self.segmentor(inputs, mode='tensor')


def _build(cfg):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import featup_mmseg.plugin  # noqa: F401
    init_default_scope('mmseg')
    torch.manual_seed(0)
    return MODELS.build(cfg).eval()


# The models' stages have radius 1 (3 x 3 windows): the new exporter's graph optimizer
# takes about 1 s per 100 nodes on 2 cores, and every tap adds a few nodes; the ops are
# checked with 5 x 5 windows above.
def _segformer_with_featup_head():
    return _build(dict(
        type='EncoderDecoder',
        backbone=dict(type='MixVisionTransformer', in_channels=3, embed_dims=8, num_stages=4,
                      num_layers=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                      patch_sizes=[7, 3, 3, 3], sr_ratios=[8, 4, 2, 1],
                      out_indices=(0, 1, 2, 3), mlp_ratio=2),
        decode_head=dict(type='FeatUpSegformerHead', in_channels=[8, 16, 32, 64],
                         in_index=[0, 1, 2, 3], channels=8, num_classes=3,
                         norm_cfg=dict(type='BN'), align_corners=False,
                         upsampler=dict(type='JBUStage', key_dim=4, radius=1)),
        test_cfg=dict(mode='whole')))


def _vit_with_jbu_neck():
    return _build(dict(
        type='GuidedEncoderDecoder',
        backbone=dict(type='VisionTransformer', img_size=(64, 80), patch_size=16,
                      embed_dims=16, num_layers=1, num_heads=2, out_indices=(0, ),
                      final_norm=True),
        # out_stride 3: 64 x 80 -> 22 x 27 in stages that do not divide the image
        neck=dict(type='JBUNeck', in_channels=16, out_stride=3, num_stages=2, key_dim=4,
                  radius=1),
        decode_head=dict(type='FCNHead', in_channels=16, in_index=-1, channels=16,
                         num_convs=0, concat_input=False, num_classes=3,
                         norm_cfg=dict(type='BN')),
        test_cfg=dict(mode='whole')))


def test_segformer_with_featup_head(tmp_path):
    """TorchScript exporter. It fixes MiT's attention sequence lengths (torch's
    nn.MultiheadAttention export), so only the batch stays dynamic; the dynamo exporter,
    which keeps the image size dynamic too, is checked through tools/export_onnx.py below
    (torch.export's symbolic shapes through MiT take most of a minute on 2 cores)."""
    model = _TensorMode(_segformer_with_featup_head())
    example = (torch.randn(2, 3, 64, 80), )
    runs = [example, (torch.randn(1, 3, 64, 80), )]
    assert _largest_difference(model, example, runs, False, tmp_path, (0, )) <= MODEL_TOLERANCE


@pytest.mark.parametrize('dynamo', EXPORTERS)
def test_jbu_neck_under_guided_encoder_decoder(dynamo, tmp_path):
    model = _TensorMode(_vit_with_jbu_neck())
    example = (torch.randn(2, 3, 64, 80), )
    runs = [example, (torch.randn(3, 3, 64, 80), )]
    # the neck's stage sizes are computed from the image size in Python: batch only
    assert _largest_difference(model, example, runs, dynamo, tmp_path, (0, )) \
        <= MODEL_TOLERANCE


def _vit_with_attention_upsampler_neck(upsampler):
    return _build(dict(
        type='GuidedEncoderDecoder',
        backbone=dict(type='VisionTransformer', img_size=(64, 80), patch_size=16,
                      embed_dims=16, num_layers=1, num_heads=2, out_indices=(0, ),
                      final_norm=True),
        # 4 x 5 features upsampled in one step to 32 x 40, guided by the image
        neck=dict(type='FeatureUpsamplingNeck', in_channels=16, out_stride=2,
                  upsampler=upsampler),
        decode_head=dict(type='FCNHead', in_channels=16, in_index=-1, channels=16,
                         num_convs=0, concat_input=False, num_classes=3,
                         norm_cfg=dict(type='BN')),
        test_cfg=dict(mode='whole')))


@pytest.mark.parametrize('upsampler', [
    pytest.param(dict(type='AnyUp', qk_dim=16, num_heads=2), id='AnyUp'),
    pytest.param(dict(type='NAF', dim=32, heads_attn=2, heads_rope=2, img_layers=1), id='NAF')])
def test_attention_upsampler_neck_under_guided_encoder_decoder(upsampler, tmp_path):
    """TorchScript exporter, dynamic batch (the dynamo exporter is checked on the modules
    alone above). Sizes read off tensors reach the upsampler as 0-d tensors in this trace."""
    model = _TensorMode(_vit_with_attention_upsampler_neck(upsampler))
    example = (torch.randn(2, 3, 64, 80), )
    runs = [example, (torch.randn(3, 3, 64, 80), )]
    assert _largest_difference(model, example, runs, False, tmp_path, (0, )) \
        <= MODEL_TOLERANCE


def _resnet(dilated=False):
    strides, dilations = ((1, 2, 1, 1), (1, 1, 2, 4)) if dilated else ((1, 2, 2, 2),
                                                                       (1, 1, 1, 1))
    return dict(type='ResNetV1c', depth=18, stem_channels=8, base_channels=8,
                strides=strides, dilations=dilations, norm_cfg=dict(type='BN'),
                contract_dilation=True)


SMALL_JBU = dict(type='JBUStage', key_dim=4, radius=1)
HEAD = dict(num_classes=3, norm_cfg=dict(type='BN'), align_corners=False)
SWAP_MODELS = {
    # PPM pooling to 1 and 2 of a 2 x 4 map: the TorchScript exporter pools only to
    # divisors (mmseg's own UPerHead alike; the dynamo exporter pools to any size)
    'uper_head_and_output_upsampler': dict(
        backbone=_resnet(), output_upsampler=dict(out_stride=2, num_stages=1, key_dim=4,
                                                  radius=1),
        decode_head=dict(type='FeatUpUPerHead', in_channels=[8, 16, 32, 64],
                         in_index=[0, 1, 2, 3], channels=8, pool_scales=(1, 2),
                         upsampler=SMALL_JBU, **HEAD)),
    'fpn_neck': dict(
        backbone=_resnet(), neck=dict(type='FeatUpFPN', in_channels=[8, 16, 32, 64],
                                      out_channels=8, num_outs=4, upsampler=SMALL_JBU),
        decode_head=dict(type='FPNHead', in_channels=[8] * 4, in_index=[0, 1, 2, 3],
                         feature_strides=[4, 8, 16, 32], channels=8, **HEAD)),
    'sep_aspp_head': dict(
        backbone=_resnet(dilated=True),
        decode_head=dict(type='FeatUpDepthwiseSeparableASPPHead', in_channels=64, in_index=3,
                         channels=8, dilations=(1, 2), c1_in_channels=8, c1_channels=8,
                         upsampler=SMALL_JBU, **HEAD)),
}


@pytest.mark.parametrize('name', sorted(SWAP_MODELS))
def test_swapped_heads_necks_and_output_upsampler(name, tmp_path):
    model = _TensorMode(_build(dict(type='GuidedEncoderDecoder', test_cfg=dict(mode='whole'),
                                    **SWAP_MODELS[name])))
    example = (torch.randn(2, 3, 64, 128), )
    runs = [example, (torch.randn(1, 3, 64, 128), )]
    assert _largest_difference(model, example, runs, False, tmp_path, (0, )) <= MODEL_TOLERANCE


class _AllBaselineUpsamplers(torch.nn.Module):
    """Every Table 2 upsampler (and DySample) on one (source, guidance) pair."""

    def __init__(self):
        super().__init__()
        from featup_mmseg.layers import feature_upsamplers
        self.upsamplers = torch.nn.ModuleList(
            getattr(feature_upsamplers, name)(source_dim=32, guidance_dim=32)
            for name in feature_upsamplers.__all__)

    def forward(self, source, guidance):
        return torch.cat([up(source, guidance) for up in self.upsamplers], dim=1)


@pytest.mark.skipif(not dynamo_export_available(),
                    reason=f'torch {torch.__version__} has no torch.onnx.export(dynamo=True)')
def test_baseline_upsamplers(tmp_path):
    """The dynamo exporter, static shapes. The TorchScript exporter loses the rank of the
    reassembly's stacked phases before pixel_shuffle, and A2U convolves each sample with its
    own predicted kernel, whose shape it would need to know."""
    torch.manual_seed(0)
    model = _AllBaselineUpsamplers().eval()
    example = (torch.randn(2, 32, 6, 7), torch.randn(2, 32, 12, 14))
    assert _largest_difference(model, example, [example], True, tmp_path) <= LAYER_TOLERANCE


@pytest.mark.parametrize('dynamo', EXPORTERS)
def test_a2u_refuses_a_dynamic_batch_before_tracing(dynamo, tmp_path):
    """Its per-sample kernels are one convolution grouped by the batch, which an export
    fixes: ONNX Runtime failed at any other batch size."""
    from featup_mmseg.layers.feature_upsamplers import A2U
    example = (torch.randn(2, 32, 6, 7), torch.randn(2, 32, 12, 14))
    with pytest.raises(ValueError, match=r'export_onnx: A2U cannot be exported with a dynamic '
                       r'batch \(it convolves each sample .*\); dynamic axes it supports: '
                       r'height, width'):
        export_onnx(A2U(32, 32), example, str(tmp_path / 'a2u.onnx'), dynamo=dynamo,
                    input_names=['source', 'guidance'], output_names=['output'],
                    **_dynamic_args(2, (0, ), dynamo))
    assert not (tmp_path / 'a2u.onnx').exists()


STAGE_EXPORT = r'''
import io
import sys
import torch
{imports}
from featup_mmseg.layers import JBUStage
stage = JBUStage(guidance_dim=8, key_dim=4, radius=1).eval()
inputs = (torch.randn(1, 8, 6, 6), torch.randn(1, 8, 12, 10))
exported = io.BytesIO()
try:
    torch.onnx.export(stage, inputs, exported, **{kwargs})  # outside torch.no_grad()
except RuntimeError as err:
    sys.exit(str(err))
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(exported.getvalue(),
                                       providers=['CPUExecutionProvider'])
names = [i.name for i in session.get_inputs()]
actual = session.run(None, dict(zip(names, (t.numpy() for t in inputs))))[0]
with torch.no_grad():
    print(float(np.abs(actual - stage(*inputs).numpy()).max()))
'''


def _export_stage(imports):
    kwargs = "dict(dynamo=False)" if dynamo_export_available() else '{}'
    return subprocess.run([sys.executable, '-c', STAGE_EXPORT.format(imports=imports,
                                                                      kwargs=kwargs)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_torch_onnx_export_after_importing_the_plugin():
    """The plugin registers the TorchScript symbolics of the featup_mmseg ops; traced with
    gradients on, the stage records its plain ops (the compiled resize got 0-d tensor
    sizes there)."""
    result = _export_stage('import featup_mmseg.plugin')
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout) <= LAYER_TOLERANCE


def test_an_exporter_without_the_translations_is_told_which_call_is_missing():
    result = _export_stage('')
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        'torch.onnx.export (TorchScript exporter) met featup_mmseg.ops.window_correlation, '
        'whose ONNX translation is not registered: call featup_mmseg.ops.onnx_export.'
        'register_onnx_translations() before exporting (importing featup_mmseg.plugin does '
        'it), or export with featup_mmseg.ops.onnx_export.export_onnx')
    assert 'graph(' not in result.stderr  # no dump of the traced graph


def test_export_leaves_every_module_mode_as_it_was(tmp_path):
    """The TorchScript exporter would leave the eval submodules of a train-mode wrapper in
    training mode (its model.train(mode) on exit): a later export would then be a
    training graph. export_onnx restores each module's own mode."""
    segmentor = _segformer_with_featup_head()
    wrapper = _TensorMode(segmentor)
    assert wrapper.training and not segmentor.training
    export_onnx(wrapper, (torch.randn(1, 3, 64, 64), ), str(tmp_path / 'model.onnx'))
    assert wrapper.training
    assert not any(module.training for module in segmentor.modules())


# ----------------------------------------------------------------------------------------
# tools/export_onnx.py

DEMO_CONFIG = ROOT / 'configs/demo/segformer_mit-b0_featup-jbu_synthetic-128x128.py'
# MiT-B0 shrunk to 8 channels at 1/4 and one block per level, radius-1 JBU stages
SMALL = ['--cfg-options', 'model.backbone.embed_dims=8', 'model.backbone.num_layers=[1,1,1,1]',
         'model.decode_head.in_channels=[8,16,40,64]', 'model.decode_head.channels=8',
         'model.decode_head.upsampler.radius=1', 'model.decode_head.upsampler.key_dim=4']


def _export_tool(tmp_path, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / 'tools/export_onnx.py'), str(DEMO_CONFIG), '--shape', '64',
         '96', '--out', str(tmp_path / 'model.onnx'), '--check', *args, *SMALL],
        capture_output=True, text=True, cwd=ROOT, timeout=600)


def _checked_differences(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith('input ')]
    return [float(line.split('= ')[1].split()[0]) for line in lines]


def test_export_tool_torchscript_check_and_its_failure(tmp_path):
    result = _export_tool(tmp_path, '--tolerance', '0')  # no export is bit-exact
    assert result.returncode == 1, result.stderr[-2000:]
    assert 'check failed (tolerance 0)' in result.stderr
    # the export's shape and a second batch size (--dynamic batch, the default)
    differences = _checked_differences(result.stdout)
    assert len(differences) == 2 and 0 < max(differences) <= MODEL_TOLERANCE, result.stdout


def test_export_tool_refuses_a_dynamic_size_for_the_jbu_neck_up_front(tmp_path):
    config = ROOT / 'configs/demo/vit-tiny_jbu-neck_featup-pretrain_synthetic-128x128.py'
    result = subprocess.run(
        [sys.executable, str(ROOT / 'tools/export_onnx.py'), str(config), '--shape', '64',
         '64', '--out', str(tmp_path / 'model.onnx'), '--dynamic', 'all'],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        'export_onnx.py: error: export_onnx: JBUNeck cannot be exported with a dynamic height '
        "and width (its stages' sizes are computed from the image size in Python, so an "
        'export fixes them); dynamic axes it supports: batch')
    assert len(result.stderr) < 3000  # no traced graph
    assert not (tmp_path / 'model.onnx').exists()


@pytest.mark.skipif(not dynamo_export_available(),
                    reason=f'torch {torch.__version__} has no torch.onnx.export(dynamo=True)')
def test_export_tool_dynamo_with_dynamic_batch_and_size(tmp_path):
    result = _export_tool(tmp_path, '--dynamo', '--dynamic', 'all')
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # the export's shape, a second batch size and a second image size
    differences = _checked_differences(result.stdout)
    assert len(differences) == 3 and max(differences) <= MODEL_TOLERANCE, result.stdout


# ----------------------------------------------------------------------------------------
# cross-scale neighbourhood attention: the ops, AnyUp and NAF

class _NeighbourhoodAttention(torch.nn.Module):
    """Scores of (queries, keys), their softmax applied to values: both ops' outputs
    joined on channels."""

    def __init__(self, kernel_size, dilation, border):
        super().__init__()
        self.kernel_size, self.dilation, self.border = kernel_size, dilation, border

    def forward(self, queries, keys, values):
        scores = neighbourhood_attention_scores(queries, keys, self.kernel_size, self.dilation,
                                                self.border)
        out = neighbourhood_attention_aggregate(scores.softmax(1), values, self.dilation,
                                                self.border)
        return torch.cat([scores, out], dim=1)


def _attention_inputs(batch, size, input_size, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, *size, generator=gen),
            torch.randn(batch, 3, *input_size, generator=gen),
            torch.randn(batch, 2, *input_size, generator=gen))


# (kernel_size, dilation, border, output size, low-res size): non-square maps, so that
# swapped rows and columns show; even and odd windows
NEIGHBOURHOOD_CASES = {
    'shift_x2': (3, 1, 'shift', (6, 8), (3, 4)),
    'shift_dilated_non_integer_ratio': (2, 2, 'shift', (7, 9), (4, 5)),
    'shift_output_smaller': (3, 1, 'shift', (3, 4), (5, 6)),
    'clamp_map_smaller_than_window': (5, 1, 'clamp', (5, 7), (2, 3)),
    'clamp_dilated_x2': (3, 2, 'clamp', (6, 8), (3, 4)),
}


@pytest.mark.parametrize('dynamo', EXPORTERS)
@pytest.mark.parametrize('case', sorted(NEIGHBOURHOOD_CASES))
def test_neighbourhood_attention_ops(case, dynamo, tmp_path):
    kernel_size, dilation, border, size, input_size = NEIGHBOURHOOD_CASES[case]
    module = _NeighbourhoodAttention(kernel_size, dilation, border)
    example = _attention_inputs(2, size, input_size, seed=0)
    other = _attention_inputs(3, size, input_size, seed=1)  # dynamic batch
    difference = _largest_difference(module, example, [example, other], dynamo, tmp_path,
                                     dynamic_axes=(0, ))
    assert difference <= LAYER_TOLERANCE


@pytest.mark.parametrize('dynamo', EXPORTERS)
def test_neighbourhood_attention_ops_refuse_a_dynamic_size(dynamo, tmp_path):
    """The rows and columns each tap reads are export-time constants of the sizes."""
    module = _NeighbourhoodAttention(3, 1, 'clamp')
    example = _attention_inputs(2, (6, 8), (3, 4), seed=0)
    with pytest.raises(Exception, match=r'neighbourhood_attention_scores: ONNX export needs '
                       r'the height and width of queries fixed at export time'):
        export_onnx(module, example, str(tmp_path / 'model.onnx'), dynamo=dynamo,
                    input_names=['input0', 'input1', 'input2'], output_names=['output'],
                    **_dynamic_args(3, (2, 3), dynamo))


class _UpsampleTo(torch.nn.Module):
    """``upsampler(image, features, output_size)`` at a fixed output size."""

    def __init__(self, upsampler, output_size):
        super().__init__()
        self.upsampler = upsampler
        self.output_size = output_size

    def forward(self, image, features):
        return self.upsampler(image, features, self.output_size)


def _anyup():
    # a window of 0.2 of the side: 3 x 3 taps with masked borders on a 3 x 4 map
    return AnyUp(qk_dim=16, num_heads=2, window_ratio=0.2)


def _naf():
    return NAF(dim=32, heads_attn=2, heads_rope=2, kernel_size=3, img_layers=1)


# (module, image size, features (C, h, w), output size): average pooling to sizes that do
# not divide the image's; NAF's image is over 4x the output (its bilinear downsizing) and
# its features 2 rows high, under its 3 x 3 window (padded, the padded taps masked)
ATTENTION_UPSAMPLERS = {'AnyUp': (_anyup, (14, 15), (5, 3, 4), (7, 9)),
                        'NAF': (_naf, (30, 37), (4, 2, 5), (7, 9))}


@pytest.mark.parametrize('dynamo', EXPORTERS)
@pytest.mark.parametrize('name', sorted(ATTENTION_UPSAMPLERS))
def test_attention_upsamplers(name, dynamo, tmp_path):
    build, image_size, features_shape, output_size = ATTENTION_UPSAMPLERS[name]
    torch.manual_seed(0)
    module = _UpsampleTo(build().eval(), output_size)
    example, other = ((torch.randn(batch, 3, *image_size), torch.randn(batch, *features_shape))
                      for batch in (2, 3))
    difference = _largest_difference(module, example, [example, other], dynamo, tmp_path,
                                     dynamic_axes=(0, ))
    assert difference <= LAYER_TOLERANCE


@pytest.mark.parametrize('name', sorted(ATTENTION_UPSAMPLERS))
def test_attention_upsamplers_refuse_a_dynamic_size_before_tracing(name, tmp_path):
    build, image_size, features_shape, output_size = ATTENTION_UPSAMPLERS[name]
    example = (torch.randn(1, 3, *image_size), torch.randn(1, *features_shape))
    with pytest.raises(ValueError, match=rf'export_onnx: {name} cannot be exported with a '
                       r'dynamic height and width \(.*\); dynamic axes it supports: batch'):
        export_onnx(_UpsampleTo(build(), output_size), example, str(tmp_path / 'model.onnx'),
                    input_names=['input0', 'input1'], output_names=['output'],
                    **_dynamic_args(2, (2, 3), False))
    assert not (tmp_path / 'model.onnx').exists()
