"""torch.compile(fullgraph=True) of every guided family: the same outputs and gradients as
eager, in training mode with its dropouts; and mmengine's ``compile`` runner option."""
import copy

import pytest
import torch
from helpers import ROOT
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import featup_mmseg.plugin  # noqa: F401
from featup_mmseg.layers import JBUStack
from featup_mmseg.models.image_guidance import guided_segmentor_build
from featup_mmseg.ops import window_ops

init_default_scope('mmseg')

pytestmark = pytest.mark.skipif(
    window_ops.REGISTRATION != 'dispatcher',
    reason='torch < 2.4: the ops sit behind torch.autograd.Function, where TorchDynamo '
    'breaks the graph')

# tiny stages: key_dim 4, radius 1 (guidance of at least 2 x 2)
STAGE = dict(type='JBUStage', key_dim=4, radius=1)
HEAD = dict(in_channels=[4, 4, 4, 4], in_index=[0, 1, 2, 3], channels=4, dropout_ratio=0.1,
            num_classes=3, norm_cfg=dict(type='BN', requires_grad=True), align_corners=False,
            upsampler=STAGE)


def _levels(size=16, channels=4, num_levels=4):
    return [torch.randn(2, channels, size // 2**i, size // 2**i) for i in range(num_levels)]


def _neck(**kwargs):
    with guided_segmentor_build():  # as GuidedEncoderDecoder builds it
        return MODELS.build(dict(type='JBUNeck', **kwargs))


FAMILIES = {
    'segformer_head': lambda: (MODELS.build(dict(type='FeatUpSegformerHead', **HEAD)),
                               (_levels(), )),
    'uper_head': lambda: (MODELS.build(dict(type='FeatUpUPerHead', pool_scales=(1, 2), **HEAD)),
                          (_levels(), )),
    'fpn_neck': lambda: (MODELS.build(dict(type='FeatUpFPN', in_channels=[4, 4, 4, 4],
                                           out_channels=4, num_outs=5, upsampler=STAGE)),
                         (_levels(), )),
    'deeplabv3plus_head': lambda: (MODELS.build(dict(
        type='FeatUpDepthwiseSeparableASPPHead', in_channels=4, in_index=1, channels=4,
        dilations=(1, 2), c1_in_channels=4, c1_channels=4, dropout_ratio=0.1, num_classes=3,
        norm_cfg=dict(type='BN'), align_corners=False, upsampler=STAGE)),
        (_levels(num_levels=2), )),
    'jbu_neck': lambda: (_neck(in_channels=4, num_stages=2, key_dim=4, radius=1, out_stride=4,
                               feature_norm=True),
                         ([torch.randn(2, 4, 4, 4)], torch.randn(2, 3, 16, 16))),
    'output_upsampler': lambda: (MODELS.build(dict(
        type='ImageGuidedOutputUpsampler', in_channels=4, num_stages=2, key_dim=4, radius=1)),
        (torch.randn(2, 4, 4, 4), torch.randn(2, 3, 16, 16))),
    'jbu_stack': lambda: (JBUStack(4, num_stages=2, key_dim=4, radius=1),
                          (torch.randn(2, 4, 4, 4), torch.randn(2, 3, 16, 16))),
}


def _randomise(module):
    """Random parameters, BN statistics included, so that no gradient is trivially zero."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if tensor.dim() <= 1
                             else torch.randn_like(tensor) * 0.5)
    return module


def _tensors(tree):
    if torch.is_tensor(tree):
        return [tree]
    return [t for item in tree for t in _tensors(item)]


def _step(module, args, seed):
    """Outputs and the gradients of a fixed weighted sum of them with respect to the
    inputs and parameters, after seeding the RNG (dropout masks)."""
    args = copy.deepcopy(args)
    inputs = [t.requires_grad_() for t in _tensors(args)]
    params = [p for p in module.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    outs = _tensors(module(*args))
    weights = torch.Generator().manual_seed(1)
    loss = sum((out * torch.randn(out.shape, generator=weights, dtype=out.dtype)
                 .to(out.device)).sum()
               for out in outs)
    grads = torch.autograd.grad(loss, inputs + params)
    return outs, grads


@pytest.mark.parametrize('family', FAMILIES)
def test_family_compiles_fullgraph_with_eager_values_and_gradients(family):
    """backend='aot_eager' (TorchDynamo + AOTAutograd, no code generation): a graph break
    anywhere in the module fails fullgraph. Train mode with dropout: the compiled graph
    draws the same masks from the same seed. float64, tolerance 1e-10."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    module, args = FAMILIES[family]()
    module = _randomise(module).double().train()
    args = [[t.double() for t in a] if isinstance(a, list) else a.double() for a in args]
    compiled = torch.compile(module, fullgraph=True, backend='aot_eager')
    want = _step(module, args, seed=2)
    got = _step(compiled, args, seed=2)
    assert len(got[0]) == len(want[0]) and len(got[1]) == len(want[1])
    for a, b in zip([*got[0], *got[1]], [*want[0], *want[1]]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_dropout_is_drawn_in_these_checks():
    """The comparisons above are in train mode with dropout: another seed changes the
    outputs, so equal outputs mean equal masks."""
    torch.manual_seed(0)
    module, args = FAMILIES['jbu_stack']()
    module = _randomise(module).double().train()
    args = [a.double() for a in args]
    assert not torch.equal(_step(module, args, seed=2)[0][0], _step(module, args, seed=3)[0][0])


def test_inductor_compiles_a_jbu_stack_with_eager_values_and_gradients():
    """The default backend (inductor: generated C++ on CPU, Triton on CUDA) on the smallest
    stack, one stage. Its own RNG would draw other dropout masks: fallback_random=True
    makes it draw torch's. float64, tolerance 1e-9 (inductor fuses and reorders sums)."""
    from torch._inductor import config as inductor_config
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = _randomise(JBUStack(2, num_stages=1, key_dim=2, radius=1)).double().train()
    args = (torch.randn(1, 2, 3, 3, dtype=torch.float64),
            torch.randn(1, 3, 6, 6, dtype=torch.float64))
    compiled = torch.compile(module, fullgraph=True)
    want = _step(module, args, seed=2)
    with inductor_config.patch(fallback_random=True):
        got = _step(compiled, args, seed=2)
    for a, b in zip([*got[0], *got[1]], [*want[0], *want[1]]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_runner_compile_option_trains_a_jbu_model(tmp_path):
    """``compile=dict(...)`` in a config: mmengine's Runner wraps ``model.train_step`` in
    torch.compile (without fullgraph: train_step also runs the data preprocessor, the
    backward, the optimizer step and the loss logging). Two iterations, with finite losses,
    of the smallest guided segmentor (a one-layer ViT, the JBU neck, a classifier) on the
    CPU demo's runtime, pipeline and synthetic data, at 32 x 32."""
    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from featup_mmseg.datasets import generate_synthetic_shapes

    data_root = generate_synthetic_shapes(tmp_path / 'data', num_train=2, num_val=1, size=32)
    cfg = Config.fromfile(ROOT / 'configs/demo/segformer_mit-b0_featup-jbu_synthetic-128x128.py')
    # the smallest guided segmentor: a one-layer ViT, the JBU neck, a classifier
    cfg.model = dict(
        type='GuidedEncoderDecoder',
        data_preprocessor=dict(cfg.model.data_preprocessor, size=(32, 32)),
        backbone=dict(type='VisionTransformer', img_size=(32, 32), patch_size=8,
                      embed_dims=8, num_layers=1, num_heads=1, out_indices=(0, )),
        neck=dict(type='JBUNeck', in_channels=8, num_stages=2, key_dim=4, radius=1),
        decode_head=dict(type='FCNHead', in_channels=8, in_index=-1, channels=8,
                         num_convs=0, concat_input=False, num_classes=5,
                         norm_cfg=dict(type='BN')))
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.data_root = str(data_root)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=100)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator'):
        cfg.pop(key)
    cfg.default_hooks.checkpoint = None
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer = dict(type='SGD', lr=0.01)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.compile = dict(backend='aot_eager')

    losses = []

    class LossRecorder(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            losses.append(outputs['loss'].item())

    torch._dynamo.reset()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(LossRecorder())
    runner.train()
    assert hasattr(runner.model.train_step, '_torchdynamo_orig_callable')  # compiled
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('mode', ['default', 'reduce-overhead'])
def test_inductor_trains_a_jbu_stack_on_cuda(mode, monkeypatch):
    """CUDA: inductor's Triton kernels, and with mode='reduce-overhead' CUDA graphs (static
    shapes: recorded on the second call, replayed on the third), against eager on the
    same device; float32 with gradients, in eval mode (dropout off: no question of
    device-specific draws), tolerance 1e-4 relative, 1e-5 absolute."""
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)  # full float32 convs
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = _randomise(JBUStack(8, num_stages=2, key_dim=8, radius=1)).cuda().eval()
    args = (torch.randn(2, 8, 6, 6, device='cuda'), torch.randn(2, 3, 24, 24, device='cuda'))
    want = _step(module, args, seed=2)
    compiled = torch.compile(module, fullgraph=True, mode=mode)
    for _ in range(3):  # warm-up, recording, replay
        torch.compiler.cudagraph_mark_step_begin()
        outs, grads = _step(compiled, args, seed=2)
        got = [t.clone() for t in (*outs, *grads)]
    for a, b in zip(got, [*want[0], *want[1]]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
