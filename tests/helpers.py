"""Shared test helpers: tool runners and synthetic FeatUp checkpoints."""
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_tool(name, *args, timeout=600, env=None):
    """Runs tools/<name> with this interpreter from the repository root; must succeed."""
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / name), *map(str, args)],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert result.returncode == 0, \
        f'{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    return result


def official_featup_checkpoint(dim=384, use_norm=True, seed=0, backbone_prefix='model.0.'):
    """A Lightning checkpoint dict with exactly the key names and shapes FeatUp publishes
    for a ViT-S/16 JBU stack (spec section 3), filled with random values. The backbone is
    under ``backbone_prefix``: 'model.0.' in FeatUp's Sequential(backbone, ChannelNorm),
    'model.' where FeatUp builds the model without the norm (its no_norm checkpoints)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    state = {}
    for stage in range(1, 5):
        p = f'upsampler.up{stage}.'
        state.update({
            p + 'range_temp': rand(()),
            p + 'range_proj.0.weight': rand(32, 3, 1, 1),
            p + 'range_proj.0.bias': rand(32),
            p + 'range_proj.3.weight': rand(32, 32, 1, 1),
            p + 'range_proj.3.bias': rand(32),
            p + 'fixup_proj.0.weight': rand(49, 52, 1, 1),
            p + 'fixup_proj.0.bias': rand(49),
            p + 'fixup_proj.3.weight': rand(49, 49, 1, 1),
            p + 'fixup_proj.3.bias': rand(49),
            p + 'sigma_spatial': rand(()).abs() + 0.5,
        })
    state['upsampler.fixup_proj.1.weight'] = rand(dim, dim, 1, 1)
    state['upsampler.fixup_proj.1.bias'] = rand(dim)
    if use_norm:
        state['model.1.norm.weight'] = rand(dim)
        state['model.1.norm.bias'] = rand(dim)
    state.update({  # a few frozen-backbone and training-only tensors
        backbone_prefix + 'model.cls_token': rand(1, 1, dim),
        backbone_prefix + 'model.patch_embed.proj.weight': rand(dim, 3, 16, 16),
        backbone_prefix + 'model.blocks.0.norm1.weight': rand(dim),
        'downsampler.w': rand(16, 16),
        'downsampler.b': rand(16, 16),
        'downsampler.attention_net.1.weight': rand(1, dim),
        'downsampler.attention_net.1.bias': rand(1),
        'scale_net.net.weight': rand(1, dim, 1, 1),
        'scale_net.net.bias': rand(1),
    })
    return {'epoch': 0, 'global_step': 2000, 'pytorch-lightning_version': '1.9.5',
            'state_dict': state}


def run_torchrun(script, *args, nproc=2, port, timeout=600):
    """Runs tools/<script> under torchrun with ``nproc`` CPU processes; must succeed."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    command = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}',
               f'--master_port={port}', str(ROOT / 'tools' / script), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env=env)
    # torchrun exits 0 only when every rank did
    assert result.returncode == 0, result.stderr[-3000:]
    return result


class ImageSpy:
    """Records the image (last argument) of every ``cls.forward(module, ..., image)`` call,
    e.g. of JBUNeck or ImageGuidedOutputUpsampler, during a test."""

    def __init__(self, monkeypatch, cls):
        self.images = []
        original = cls.forward

        def forward(module, *args):
            self.images.append(args[-1])
            return original(module, *args)

        monkeypatch.setattr(cls, 'forward', forward)
