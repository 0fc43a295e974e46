# The bilinear baseline (paper Table 2, "Bilinear": 39.7 mIoU) through the same head
# class: identical to mmseg's SegformerHead, so runs differ only in the upsampler.
_base_ = ['./segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512.py']

model = dict(decode_head=dict(upsampler=dict(_delete_=True, type='bilinear')))
