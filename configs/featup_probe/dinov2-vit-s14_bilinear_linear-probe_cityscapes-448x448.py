# JAFAR's linear-probe protocol (also AnyUp's and NAF's), bilinear row: published
# 59.37 mIoU on Cityscapes (19 classes) (JAFAR paper, "Bilinear").
# A frozen DINOv2 ViT-S/14 at 448 x 448 gives 32 x 32 features, upsampled to the image by
# the neck, read out by a linear (1x1) probe, the only trained part. JAFAR's
# evaluation/train_probes.py: AdamW (lr 5e-4, weight decay 1e-5), cosine over 20 epochs,
# batch 2, short side 448 + centre crop, random horizontal flip.
# Weights: timm's vit_small_patch14_dinov2.lvd142m model.safetensors at the path below.
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py'
]
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

crop_size = (448, 448)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='GuidedEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='TimmFeatureBackbone',
        model_name='vit_small_patch14_dinov2.lvd142m',
        img_size=crop_size,
        out_indices=(-1, ),
        checkpoint='pretrain/vit_small_patch14_dinov2.lvd142m.safetensors',
        frozen=True,
        final_norm=True,
        model_kwargs=dict()),
    neck=dict(
        type='FeatureUpsamplingNeck',
        in_channels=384,
        upsampler=dict(type='bilinear'),
        out_stride=1,
        frozen=True),
    decode_head=dict(  # the linear probe
        type='FCNHead',
        in_channels=384,
        in_index=-1,
        channels=384,
        num_convs=0,
        kernel_size=1,
        concat_input=False,
        dropout_ratio=0.0,
        num_classes=19,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    # the image's short side is resized to 448; 448 x 448 windows cover the rest
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(298, 298)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='ResizeShortestEdge', scale=448, max_size=10000),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeShortestEdge', scale=448, max_size=10000),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-5))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=20, by_epoch=True, convert_to_iter_based=True)
]
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=20, val_interval=20)
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=20))
