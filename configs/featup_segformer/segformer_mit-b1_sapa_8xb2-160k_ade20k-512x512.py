# SegFormer-B1 with SAPA-B stages; the 64-channel embedding gives Table 2's +0.20 M
# (paper Table 2, "SAPA": 41.6 mIoU; SAPA's own paper uses 32). Same head, recipe and
# protocol as the JBU and bilinear configs: only the six x2 stages differ.
_base_ = ['./segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512.py']

model = dict(
    decode_head=dict(upsampler=dict(_delete_=True, type='SAPA', up_kernel=5, embedding_dim=64)))
