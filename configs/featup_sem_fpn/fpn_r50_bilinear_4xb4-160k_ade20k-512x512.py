# The bilinear twin: FeatUpFPN with bilinear top-down steps, i.e. mmseg's FPN with
# upsample_cfg=dict(mode='bilinear'). (mmseg's own semantic FPN upsamples with 'nearest':
# upsampler=dict(type='nearest') reproduces it exactly.)
_base_ = ['./fpn_r50_featup-jbu_4xb4-160k_ade20k-512x512.py']

model = dict(neck=dict(upsampler=dict(_delete_=True, type='bilinear')))
