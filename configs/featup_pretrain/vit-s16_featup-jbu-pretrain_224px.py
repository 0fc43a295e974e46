# FeatUp's own setting (paper Table 7, JBU column): pretrain the JBU upsampler of a frozen
# ViT-S/16 on 224 px images, 14 x 14 -> 224 x 224 (x16, four x2 stages), with the
# multi-view reconstruction objective: 2000 steps of 4 images x 2 views, attention
# downsampler (kernel 16), random projections to 30 dims, max pad 30 px, max zoom 2,
# learned uncertainty, no TV prior, NAdam lr 1e-3.
#
#   python tools/pretrain_upsampler.py configs/featup_pretrain/vit-s16_featup-jbu-pretrain_224px.py
#
# The model is the JBU-neck example's ViT-S/16 (point its backbone init_cfg at your
# weights), with the neck at the image size and FeatUp's feature norm; images come from
# ADE20K's training set (labels unused). The result,
# work_dirs/<this config>/featup_pretrained_upsampler.pth, loads into a JBUNeck with
# init_cfg=dict(type='Pretrained', checkpoint=..., prefix='neck.') and into
# tools/visualize_features.py --upsampler. (tools/train.py with this config would go on
# to train the example's linear head, i.e. a linear probe of the upsampled features.)
_base_ = ['../featup_neck/vit-s16_jbu-neck_linear_8xb2-80k_ade20k-512x512.py']

image_size = (224, 224)
model = dict(
    data_preprocessor=dict(size=image_size),
    backbone=dict(img_size=image_size),
    # FeatUp upsamples to the image size and normalises the features (use_norm=True)
    neck=dict(out_stride=1, num_stages=4, feature_norm=True),
    test_cfg=dict(_delete_=True, mode='whole'))

custom_hooks = [
    dict(
        type='FeatUpPretrainHook',
        steps=2000,
        images_per_step=4,
        num_jitters=2,
        max_pad=30,
        max_zoom=2.0,
        downsampler='attention',
        kernel_size=16,
        proj_dim=30,
        uncertainty=True,
        tv_weight=0.0,
        optimizer=dict(type='NAdam', lr=1e-3))
]

train_pipeline = [  # images only: pretraining uses no labels
    dict(type='LoadImageFromFile'),
    # shorter side to 224, then a random 224 x 224 crop
    dict(type='RandomResize', scale=(2 * 224, 224), ratio_range=(1.0, 1.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size),
    dict(type='PackSegInputs')
]
train_dataloader = dict(batch_size=4, dataset=dict(pipeline=train_pipeline))
