# The bilinear twin: exactly mmseg's DepthwiseSeparableASPPHead.
_base_ = ['./deeplabv3plus_r50-d8_featup-jbu_4xb4-160k_ade20k-512x512.py']

model = dict(decode_head=dict(upsampler=dict(_delete_=True, type='bilinear')))
