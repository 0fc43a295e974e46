# FeatUp's Table 1 (linear probe), bilinear row: published 66.95 acc / 42.40 mIoU
# (FeatUp paper, COCO-Stuff's 27 coarse classes).
# The probe of configs/_base_/models/ with a frozen DINO ViT-S/16 at 224 x 224: 14 x 14
# features, upsampled x16 to the image by the neck, read out by a linear (1x1) probe, the
# only trained part. FeatUp's train_probes.py: Adam, lr 5e-3, batch 2, on STEGO's curated
# COCO-Stuff lists; FeatUp trains its probe on the 14 x 14 features, this config on the
# upsampled ones (as JAFAR).
# Weights: timm's vit_small_patch16_224.dino model.safetensors at the path below.
_base_ = [
    'mmseg::_base_/datasets/coco-stuff164k.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
    '../_base_/models/dinov2-vit-s14_linear-probe_448x448.py'
]

crop_size = (224, 224)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        model_name='vit_small_patch16_224.dino',
        img_size=crop_size,
        checkpoint='pretrain/vit_small_patch16_224.dino.safetensors'))

# short side to 224 and a centre crop, scored at the crop, as FeatUp's probes
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='ResizeShortestEdge', scale=224, max_size=10000),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='ResizeShortestEdge', scale=224, max_size=10000),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='ResetOriginalShape'),  # predictions scored at the crop
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
