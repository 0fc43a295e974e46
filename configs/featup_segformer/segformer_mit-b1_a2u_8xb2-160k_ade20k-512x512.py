# SegFormer-B1 with A2U stages: affinity-aware upsampling (paper Table 2, "A2U": 41.5
# mIoU). Same head, recipe and protocol as the JBU and bilinear configs: only the six x2
# stages differ.
_base_ = ['./segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512.py']

model = dict(
    decode_head=dict(
        upsampler=dict(_delete_=True, type='A2U', up_kernel=3, encoder_kernel=6,
                       norm_groups=32)))
