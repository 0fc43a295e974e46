# Ablation "- Softmax + Euclidean" (paper Table 3: 43.8 mIoU): a Gaussian of the
# Euclidean key distance with a learned width replaces the temperature softmax.
_base_ = ['./segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512.py']

model = dict(decode_head=dict(upsampler=dict(range_kernel='gaussian_euclidean')))
