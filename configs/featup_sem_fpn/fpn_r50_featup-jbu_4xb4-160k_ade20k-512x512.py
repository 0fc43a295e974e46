# Semantic FPN-R50 on ADE20K with FeatUp's JBU in the FPN neck's three top-down steps,
# each guided by the finer lateral. Everything else is mmseg's recipe.
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

model = dict(
    neck=dict(
        type='FeatUpFPN',
        upsampler=dict(type='JBUStage', key_dim=32, radius=3, range_kernel='softmax')))
