# SegFormer-B1 with DySample stages: 'lp' style, 4 groups, static scope 0.25 (ICCV 2023;
# not in FeatUp's Table 2). Same head, recipe and protocol as the JBU and bilinear
# configs: only the six x2 stages differ.
_base_ = ['./segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512.py']

model = dict(
    decode_head=dict(upsampler=dict(_delete_=True, type='DySample', groups=4, scope=0.25)))
