# Demo: the same SegFormer (MiT-B0) with FeatUp's JBU stages in the head.
_base_ = ['./segformer_mit-b0_bilinear_synthetic-128x128.py']
model = dict(decode_head=dict(upsampler=dict(_delete_=True, type='JBUStage')))
