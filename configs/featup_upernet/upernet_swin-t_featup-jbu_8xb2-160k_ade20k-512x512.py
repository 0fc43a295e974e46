# UPerNet with a Swin-T backbone (mmseg's ImageNet-1k pretrained recipe: AdamW, 8 GPUs x
# 2 images) and FeatUp's JBU in every upsampling step of the head, as in the R50 config.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

model = dict(
    decode_head=dict(
        type='FeatUpUPerHead',
        upsampler=dict(type='JBUStage', key_dim=32, radius=3, range_kernel='softmax')))
