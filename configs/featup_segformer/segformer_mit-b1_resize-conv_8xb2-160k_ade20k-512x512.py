# SegFormer-B1 with resize-conv stages: bilinear x2, then a learned 3x3 conv (paper
# Table 2, "Resize-conv": 41.1 mIoU). Same head, recipe and protocol as the JBU and
# bilinear configs: only the six x2 stages differ.
_base_ = ['./segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512.py']

model = dict(decode_head=dict(upsampler=dict(_delete_=True, type='ResizeConv', kernel_size=3)))
