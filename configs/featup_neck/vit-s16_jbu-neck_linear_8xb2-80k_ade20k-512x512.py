# A JBU neck behind a ViT-S/16: FeatUp's image-guided stack lifts the 1/16 patch features
# to 1/4 of the image, read out by a linear (1x1) classifier, as in FeatUp's linear
# probes but trained end to end on ADE20K. Any mmseg backbone works the same way (set
# neck.in_channels and neck.in_index), timm ones through mmseg's TIMMBackbone.
#
# Backbone weights: convert timm's vit_small_patch16_224 with mmseg's
# tools/model_converters/vit2mmseg.py to the path below (nothing is downloaded here).
# FeatUp's pretrained upsampler for ViT-S/16: convert its checkpoint with
# tools/convert_featup_checkpoint.py and set
#   model.neck.init_cfg = dict(type='Pretrained', checkpoint='pretrain/featup_vit_jbu.pth')
# with model.neck.feature_norm=True (FeatUp's checkpoints include the feature norm).
_base_ = [
    'mmseg::_base_/datasets/ade20k.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py'
]
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
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
        type='VisionTransformer',
        img_size=crop_size,
        patch_size=16,
        in_channels=3,
        embed_dims=384,
        num_layers=12,
        num_heads=6,
        mlp_ratio=4,
        out_indices=(11, ),
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        with_cls_token=True,
        final_norm=True,
        norm_cfg=dict(type='LN', eps=1e-6),
        act_cfg=dict(type='GELU'),
        interpolate_mode='bicubic',
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/vit_small_p16_224_mmseg.pth')),
    neck=dict(
        type='JBUNeck',
        in_channels=384,
        in_index=-1,
        out_stride=4,
        num_stages=4,
        feature_norm=False),
    decode_head=dict(
        type='FCNHead',
        in_channels=384,
        in_index=-1,
        channels=384,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'cls_token': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
        'neck': dict(lr_mult=10.),
        'head': dict(lr_mult=10.)
    }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=80000, by_epoch=False)
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
