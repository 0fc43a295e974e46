"""Guided upsamplers in mmseg's MODELS registry.

A guided upsampler is built with ``guidance_dim`` (the guidance's channels) plus its
config, and called as ``upsampler(source, guidance)``, returning ``source`` resampled to
the guidance's spatial size. ``FeatUpSegformerHead(upsampler=dict(type=...))`` builds its
stages this way, so any module registered in MODELS with that interface can replace
the JBU there.
"""
from mmseg.registry import MODELS

from ..layers import JBUStage

MODELS.register_module(module=JBUStage)
