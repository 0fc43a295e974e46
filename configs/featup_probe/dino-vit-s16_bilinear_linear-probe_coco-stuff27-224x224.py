# FeatUp's Table 1 (linear probe), bilinear row: published 66.95 acc / 42.40 mIoU
# (FeatUp paper, COCO-Stuff's 27 coarse classes).
# A frozen DINO ViT-S/16 at 224 x 224 gives 14 x 14 features, upsampled x16 to the image
# by the neck, read out by a linear (1x1) probe, the only trained part. FeatUp's
# train_probes.py: Adam, lr 5e-3, batch 2, on STEGO's curated COCO-Stuff lists; FeatUp
# trains its probe on the 14 x 14 features, this config on the upsampled ones (as JAFAR).
# Weights: timm's vit_small_patch16_224.dino model.safetensors at the path below.
_base_ = [
    'mmseg::_base_/datasets/coco-stuff164k.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py'
]
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

crop_size = (224, 224)
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
        model_name='vit_small_patch16_224.dino',
        img_size=crop_size,
        out_indices=(-1, ),
        checkpoint='pretrain/vit_small_patch16_224.dino.safetensors',
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
        num_classes=27,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    # the image's short side is resized to 224; 224 x 224 windows cover the rest
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(149, 149)))

# short side to 224 and a centre crop, as FeatUp's and JAFAR's probe data
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='ResizeShortestEdge', scale=224, max_size=10000),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeShortestEdge', scale=224, max_size=10000),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
# STEGO's curated COCO-Stuff-27 lists (cocostuff/curated/<split>/
# Coco164kFull_Stuff_Coarse.txt), one image id a line, under data_root
train_dataloader = dict(
    batch_size=2,
    dataset=dict(
        type='COCOStuff27Dataset',
        ann_file='curated/train2017/Coco164kFull_Stuff_Coarse.txt',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    dataset=dict(
        type='COCOStuff27Dataset',
        ann_file='curated/val2017/Coco164kFull_Stuff_Coarse.txt',
        pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True, type='OptimWrapper', optimizer=dict(type='Adam', lr=5e-3))
param_scheduler = []  # a constant learning rate, as FeatUp's probes
