# The baseline twin: FeatUpFPN with nearest top-down steps computes exactly what mmseg's
# semantic FPN (its FPN neck upsamples with upsample_cfg=dict(mode='nearest')) computes with
# the same weights, whose names it keeps: the JBU config differs from it only in the
# upsampler.
_base_ = ['./fpn_r50_featup-jbu_4xb4-160k_ade20k-512x512.py']

model = dict(neck=dict(upsampler=dict(_delete_=True, type='nearest')))
