"""Loading FeatUp's published checkpoints, on a synthetic one with the official layout."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, official_featup_checkpoint, run_tool

from featup_mmseg.layers import (ChannelNorm, JBUStack, build_featup_upsampler,
                                 load_state_dict_strict)


@pytest.fixture
def checkpoint_file(tmp_path):
    path = tmp_path / 'vit_jbu_stack_cocostuff.ckpt'
    torch.save(official_featup_checkpoint(), path)
    return path


@pytest.mark.parametrize('use_norm', [True, False])
def test_loads_official_layout(tmp_path, use_norm):
    checkpoint = official_featup_checkpoint(use_norm=use_norm)
    path = tmp_path / 'featup.ckpt'
    torch.save(checkpoint, path)
    stack, norm, weights = build_featup_upsampler(path)
    state = checkpoint['state_dict']
    assert isinstance(stack, JBUStack) and stack.feat_dim == 384 and stack.num_stages == 4
    for key, value in stack.state_dict().items():
        torch.testing.assert_close(value, state['upsampler.' + key], rtol=0, atol=0)
    if use_norm:
        assert isinstance(norm, ChannelNorm)
        torch.testing.assert_close(norm.norm.weight.detach(), state['model.1.norm.weight'])
    else:
        assert norm is None
    assert weights.skipped == {'backbone': 3, 'training-only downsampler': 4,
                               'training-only uncertainty network': 2}
    out = stack.eval()(torch.randn(1, 384, 14, 14), torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 384, 224, 224) and torch.isfinite(out).all()


def test_missing_unexpected_and_misshaped_keys_are_all_reported():
    checkpoint = official_featup_checkpoint()
    state = checkpoint['state_dict']
    del state['upsampler.up3.range_proj.3.bias']
    state['upsampler.up2.range_scale'] = torch.tensor(1.0)
    state['upsampler.up4.fixup_proj.0.weight'] = torch.randn(49, 51, 1, 1)
    with pytest.raises(ValueError) as info:
        build_featup_upsampler(checkpoint)
    report = str(info.value)
    assert 'nothing was loaded' in report
    assert '1 missing keys:\n  up3.range_proj.3.bias' in report
    assert '1 unexpected keys:\n  up2.range_scale' in report
    assert 'up4.fixup_proj.0.weight: (49, 51, 1, 1) in FeatUp checkpoint (upsampler.*), ' \
        '(49, 52, 1, 1) in JBUStack' in report


def test_foreign_checkpoints_are_rejected():
    checkpoint = official_featup_checkpoint()
    checkpoint['state_dict']['decode_head.conv_seg.weight'] = torch.randn(150, 256, 1, 1)
    with pytest.raises(ValueError, match=r'not a FeatUp JBU checkpoint: 1 unexpected keys:'
                       r'\n  decode_head.conv_seg.weight'):
        build_featup_upsampler(checkpoint)
    with pytest.raises(ValueError, match=r'no upsampler.fixup_proj.1.weight'):
        build_featup_upsampler({'model.1.norm.weight': torch.ones(4)})


class _NotATensor:
    pass


def test_pickled_objects_need_trust(tmp_path):
    checkpoint = official_featup_checkpoint(dim=16)
    checkpoint['hyper_parameters'] = {'cfg': _NotATensor()}
    path = tmp_path / 'with_objects.ckpt'
    torch.save(checkpoint, path, pickle_module=pickle)
    with pytest.raises(ValueError, match=r'weights_only=True .*pass trust_checkpoint=True'):
        build_featup_upsampler(path)
    stack, _, _ = build_featup_upsampler(path, trust_checkpoint=True)
    assert stack.feat_dim == 16


def test_strict_loader_loads_nothing_on_mismatch():
    stack = JBUStack(feat_dim=8, num_stages=1)
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    state = {k: torch.zeros_like(v) for k, v in before.items()}
    state['fixup_proj.1.bias'] = torch.zeros(9)
    with pytest.raises(ValueError, match=r'fixup_proj.1.bias: \(9,\) in test, \(8,\) in JBUStack'):
        load_state_dict_strict(stack, state, 'test')
    for key, value in stack.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_convert_tool_writes_neck_layout(checkpoint_file, tmp_path):
    destination = tmp_path / 'converted' / 'vit_jbu.pth'
    result = run_tool('convert_featup_checkpoint.py', checkpoint_file, destination)
    assert 'JBU stack of 4 stages for 384-channel features' in result.stdout
    assert 'skipped tensors: 3 backbone, 4 training-only downsampler, 2 training-only ' \
        'uncertainty network' in result.stdout
    converted = torch.load(destination, weights_only=True)
    assert converted['meta']['featup_mmseg']['feature_norm'] is True
    state = converted['state_dict']
    original = official_featup_checkpoint()['state_dict']
    assert set(state) == {k for k in original if k.startswith('upsampler.')} | {
        'norm.norm.weight', 'norm.norm.bias'}
    torch.testing.assert_close(state['norm.norm.bias'], original['model.1.norm.bias'])
    torch.testing.assert_close(state['upsampler.up2.range_temp'],
                               original['upsampler.up2.range_temp'])


# ----------------------------------------------------------------------------------------
# every layout FeatUp's code produces, and the explicit norm choice

@pytest.mark.parametrize('use_norm, backbone_prefix', [
    (True, 'model.0.'),  # Sequential(backbone, ChannelNorm): FeatUp's default
    (False, 'model.'),  # the hub's no_norm models: the backbone itself under model.
    (False, 'model.0.'),
], ids=['norm', 'no_norm', 'model.0-without-norm'])
def test_loads_every_featup_layout(tmp_path, use_norm, backbone_prefix):
    checkpoint = official_featup_checkpoint(dim=16, use_norm=use_norm,
                                            backbone_prefix=backbone_prefix)
    path = tmp_path / 'featup.ckpt'
    torch.save(checkpoint, path)
    for choice in ('auto', use_norm):
        stack, norm, weights = build_featup_upsampler(path, use_norm=choice)
        assert (norm is not None) == use_norm
        assert weights.skipped == {'backbone': 3, 'training-only downsampler': 4,
                                   'training-only uncertainty network': 2}
        torch.testing.assert_close(stack.up4.range_proj[0].weight,
                                   checkpoint['state_dict']['upsampler.up4.range_proj.0.weight'])


def test_norm_choice_must_match_the_checkpoint():
    with_norm = official_featup_checkpoint(dim=16)
    without = official_featup_checkpoint(dim=16, use_norm=False, backbone_prefix='model.')
    with pytest.raises(ValueError, match=r'use_norm=True, but the checkpoint has no channel '
                       r"norm .*pass use_norm=False or 'auto'"):
        build_featup_upsampler(without, use_norm=True)
    with pytest.raises(ValueError, match=r"use_norm=False, but the checkpoint was trained with "
                       r"FeatUp's channel norm .*pass use_norm=True or 'auto'"):
        build_featup_upsampler(with_norm, use_norm=False)
    with pytest.raises(ValueError, match=r"use_norm must be 'auto', True or False, got 'yes'"):
        build_featup_upsampler(with_norm, use_norm='yes')


def test_backbone_directly_under_model_may_have_its_own_1_norm():
    # no_norm layout of a Sequential backbone whose second block has a norm: not FeatUp's
    # ChannelNorm, since other model.1.* keys (and model.2.*) are there too
    checkpoint = official_featup_checkpoint(dim=16, use_norm=False, backbone_prefix='model.')
    state = checkpoint['state_dict']
    state.update({'model.1.norm.weight': torch.ones(16), 'model.1.conv.weight': torch.ones(1),
                  'model.2.bias': torch.ones(1)})
    _, norm, weights = build_featup_upsampler(checkpoint)
    assert norm is None and weights.skipped['backbone'] == 6


def test_incomplete_norm_is_reported():
    checkpoint = official_featup_checkpoint(dim=16)
    del checkpoint['state_dict']['model.1.norm.bias']
    with pytest.raises(ValueError, match=r'\(model.1.\*\) does not match ChannelNorm; nothing '
                       r'was loaded.\n1 missing keys:\n  norm.bias'):
        build_featup_upsampler(checkpoint)


def _convert_failing(*args):
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'convert_featup_checkpoint.py'),
                             *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and result.stdout == ''
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('convert_featup_checkpoint.py: error: '), \
        result.stderr
    return lines[0]


def test_convert_tool_reports_errors_in_one_line(tmp_path):
    missing = _convert_failing(tmp_path / 'missing.ckpt', tmp_path / 'out.pth')
    assert 'No such file or directory' in missing and 'missing.ckpt' in missing

    checkpoint = official_featup_checkpoint(dim=16)
    state = checkpoint['state_dict']
    del state['upsampler.up3.range_proj.3.bias']
    state['upsampler.up2.range_scale'] = torch.tensor(1.0)
    state['upsampler.up2.range_offset'] = torch.tensor(1.0)
    torch.save(checkpoint, tmp_path / 'mismatch.ckpt')
    mismatch = _convert_failing(tmp_path / 'mismatch.ckpt', tmp_path / 'out.pth')
    assert mismatch.endswith('does not match JBUStack; nothing was loaded; 1 missing keys: '
                             'up3.range_proj.3.bias; 2 unexpected keys: up2.range_offset, '
                             'up2.range_scale')

    torch.save(official_featup_checkpoint(dim=16), tmp_path / 'normed.ckpt')
    refused = _convert_failing(tmp_path / 'normed.ckpt', tmp_path / 'out.pth', '--use-norm', 'no')
    assert "use_norm=False, but the checkpoint was trained with FeatUp's channel norm" in refused
    (tmp_path / 'garbage.ckpt').write_bytes(b'not a checkpoint')
    garbage = _convert_failing(tmp_path / 'garbage.ckpt', tmp_path / 'out.pth')
    assert 'garbage.ckpt is not a readable PyTorch checkpoint' in garbage
    (tmp_path / 'empty.ckpt').write_bytes(b'')
    empty = _convert_failing(tmp_path / 'empty.ckpt', tmp_path / 'out.pth')
    assert empty.endswith('empty.ckpt is empty (0 bytes), not a PyTorch checkpoint')
    assert not (tmp_path / 'out.pth').exists()


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def test_convert_tool_refuses_a_pickle_that_runs_code_as_unsafe(tmp_path):
    checkpoint = official_featup_checkpoint(dim=16)
    marker = tmp_path / 'ran'
    checkpoint['hyper_parameters'] = _RunsACommand(marker)
    torch.save(checkpoint, tmp_path / 'evil.ckpt')
    refused = _convert_failing(tmp_path / 'evil.ckpt', tmp_path / 'out.pth')
    assert 'evil.ckpt was refused as unsafe: it pickles Python objects besides tensors ' \
        '(posix.system), which loading with weights_only=True does not run' in refused
    assert refused.endswith('If you trust its source, pass trust_checkpoint=True '
                            '(--trust-checkpoint on the command line)')
    assert not marker.exists() and not (tmp_path / 'out.pth').exists()


def test_convert_tool_converts_no_norm_checkpoints(tmp_path):
    source = tmp_path / 'maskclip_jbu_stack_cocostuff.ckpt'
    torch.save(official_featup_checkpoint(dim=16, use_norm=False, backbone_prefix='model.'),
               source)
    result = run_tool('convert_featup_checkpoint.py', source, tmp_path / 'out.pth')
    assert 'backbone channel norm: False' in result.stdout
    assert 'skipped tensors: 3 backbone' in result.stdout
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert not any(key.startswith('norm.') for key in converted['state_dict'])
