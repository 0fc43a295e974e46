# SegFormer-B1 with FADE stages: semi-shift kernel generator and gate, k_up 5, 64
# compressed channels (paper Table 2, "FADE": 43.6 mIoU). Same head, recipe and protocol
# as the JBU and bilinear configs: only the six x2 stages differ.
_base_ = ['./segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512.py']

model = dict(
    decode_head=dict(
        upsampler=dict(_delete_=True, type='FADE', up_kernel=5, encoder_kernel=3,
                       compressed_channels=64)))
