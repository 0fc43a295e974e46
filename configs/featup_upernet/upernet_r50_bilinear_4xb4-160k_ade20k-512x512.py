# The bilinear twin: FeatUpUPerHead with bilinear steps computes exactly mmseg's UPerHead,
# so runs differ only in the upsampler.
_base_ = ['./upernet_r50_featup-jbu_4xb4-160k_ade20k-512x512.py']

model = dict(decode_head=dict(upsampler=dict(_delete_=True, type='bilinear')))
