# A variant, not mmseg's semantic FPN: FeatUpFPN with bilinear top-down steps, i.e. mmseg's
# FPN with upsample_cfg=dict(mode='bilinear'). The exact twin of mmseg's semantic FPN
# (nearest steps) is fpn_r50_nearest_4xb4-160k_ade20k-512x512.py.
_base_ = ['./fpn_r50_featup-jbu_4xb4-160k_ade20k-512x512.py']

model = dict(neck=dict(upsampler=dict(_delete_=True, type='bilinear')))
