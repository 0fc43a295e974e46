# Ablation "- MLP" (paper Table 3: 42.9 mIoU): range keys are the guidance itself.
_base_ = ['./segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512.py']

model = dict(decode_head=dict(upsampler=dict(range_kernel='no_mlp')))
