# DeepLabV3+-R50 on ADE20K with FeatUp's JBU for the head's 1/8 -> 1/4 step, guided by the
# low-level (c1) branch. Everything else is mmseg's recipe.
_base_ = ['mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

model = dict(
    decode_head=dict(
        type='FeatUpDepthwiseSeparableASPPHead',
        upsampler=dict(type='JBUStage', key_dim=32, radius=3, range_kernel='softmax')))
