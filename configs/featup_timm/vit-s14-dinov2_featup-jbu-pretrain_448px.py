# FeatUp's JBU upsampler pretrained for a frozen timm backbone, here DINOv2 ViT-S/14 at
# 448 x 448 (32 x 32 patch features upsampled x14 to the image size by four JBU stages,
# with FeatUp's feature norm), by FeatUp's multi-view objective on a folder of your images
# (no labels; any .jpg/.jpeg/.png/.bmp/.webp under data/my_images, subfolders too):
#
#   python tools/pretrain_upsampler.py configs/featup_timm/vit-s14-dinov2_featup-jbu-pretrain_448px.py
#
# The other configs of this folder inherit this one and change the backbone and size.
# Backbone weights (nothing is downloaded): the file model.safetensors of
# https://huggingface.co/timm/vit_small_patch14_dinov2.lvd142m, saved as the checkpoint
# below. The result, work_dirs/<this config>/featup_pretrained_upsampler.pth, loads into
# the neck with init_cfg=dict(type='Pretrained', checkpoint=..., prefix='neck.') and into
# tools/visualize_features.py --upsampler.
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

image_size = (448, 448)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],  # the backbone's normalisation (timm pretrained_cfg)
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=image_size)
model = dict(
    type='GuidedEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='TimmFeatureBackbone',
        model_name='vit_small_patch14_dinov2.lvd142m',
        img_size=image_size,
        out_indices=(-1, ),
        checkpoint='pretrain/vit_small_patch14_dinov2.lvd142m.safetensors',
        frozen=True,
        final_norm=True),
    # FeatUp upsamples to the image size and normalises the features (use_norm=True)
    neck=dict(type='JBUNeck', in_channels=384, out_stride=1, num_stages=4, feature_norm=True),
    # a linear classifier for a later linear probe on labelled data (FeatUp's probes:
    # COCO-Stuff, 27 classes); the pretraining does not use it
    decode_head=dict(
        type='FCNHead',
        in_channels=384,
        in_index=-1,
        channels=384,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=27,
        norm_cfg=dict(type='BN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

# FeatUp's pretraining setting (paper Table 7, JBU column)
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

train_pipeline = [  # images only
    dict(type='LoadImageFromFile'),
    # shorter side to the image size, then a random square crop
    dict(type='RandomResize', scale=(2 * 448, 448), ratio_range=(1.0, 1.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='UnlabelledImageFolder', data_root='data/my_images',
                 pipeline=train_pipeline))
# No supervised iterations (the images have no labels): tools/train.py with this config
# runs the pretraining hook only. The optimizer is the loop's, unused.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=0)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))
