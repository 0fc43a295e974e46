# UPerNet-R50 with DySample in every upsampling step of the head (the three top-down steps and
# the FPN outputs' climb), the same recipe as the JBU and bilinear configs.
_base_ = ['./upernet_r50_featup-jbu_4xb4-160k_ade20k-512x512.py']

model = dict(decode_head=dict(upsampler=dict(_delete_=True, type='DySample')))
