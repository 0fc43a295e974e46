# Ablation "- Softmax + Cosine" (paper Table 3: 43.7 mIoU): a Gaussian of the cosine
# key distance with a learned width replaces the temperature softmax.
_base_ = ['./segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512.py']

model = dict(decode_head=dict(upsampler=dict(range_kernel='gaussian_cosine')))
