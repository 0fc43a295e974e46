"""Attention-based, encoder-agnostic feature upsamplers (AnyUp, NAF) on featup_mmseg's
cross-scale neighbourhood-attention ops."""
