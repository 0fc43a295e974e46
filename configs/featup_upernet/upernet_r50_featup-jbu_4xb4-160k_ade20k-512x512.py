# UPerNet-R50 on ADE20K with FeatUp's JBU in every upsampling step of the head: the three
# top-down steps (each guided by the finer lateral) and the FPN outputs' climb to the 1/4
# grid (3 + 2 + 1 x2 stages, each guided by the FPN output it reaches). Everything else is
# mmseg's recipe (160k iterations, 4 GPUs x 4 images, SGD lr 0.01, 512 x 512 crops).
_base_ = ['mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

model = dict(
    decode_head=dict(
        type='FeatUpUPerHead',
        upsampler=dict(type='JBUStage', key_dim=32, radius=3, range_kernel='softmax')))
