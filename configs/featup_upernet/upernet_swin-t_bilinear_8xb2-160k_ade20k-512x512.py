# The bilinear twin of the Swin-T config: exactly mmseg's UPerHead.
_base_ = ['./upernet_swin-t_featup-jbu_8xb2-160k_ade20k-512x512.py']

model = dict(decode_head=dict(upsampler=dict(_delete_=True, type='bilinear')))
