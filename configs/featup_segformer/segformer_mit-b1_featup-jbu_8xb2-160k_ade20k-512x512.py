# SegFormer-B1 (MiT-B1) on ADE20K with FeatUp's JBU upsampling in the decoder (paper
# Table 2, "FeatUp (JBU)": 44.2 mIoU). Everything else is mmseg's SegFormer-B1 recipe,
# which is the protocol of the FeatUp paper's SegFormer experiments (section 4.4): 160k
# iterations, 512 x 512 crops, 8 GPUs x 2 images (batch 16), AdamW lr 6e-5 and weight
# decay 0.01, poly schedule after 1500 linear warm-up iterations, head lr x10.
_base_ = ['mmseg::segformer/segformer_mit-b1_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

model = dict(
    decode_head=dict(
        type='FeatUpSegformerHead',
        upsampler=dict(type='JBUStage', key_dim=32, radius=3, range_kernel='softmax')))
