# SegFormer-B1 with IndexNet stages: holistic, nonlinear index block with context (paper
# Table 2, "IndexNet": 41.5 mIoU). Same head, recipe and protocol as the JBU and bilinear
# configs: only the six x2 stages differ.
_base_ = ['./segformer_mit-b1_featup-jbu_8xb2-160k_ade20k-512x512.py']

model = dict(
    decode_head=dict(
        upsampler=dict(
            _delete_=True, type='IndexNet', index_block='holistic', nonlinear=True,
            context=True)))
