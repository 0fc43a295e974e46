# A linear probe of upsampled features: a frozen DINOv2 ViT-S/14 at 448 x 448 gives
# 32 x 32 features, a frozen neck upsamples them to the image (bilinear here; the probe
# configs swap the neck), a linear (1x1) classifier is the only trained part. The probe
# configs add the dataset (mmseg's dataset bases), the classes and the schedule.
# Weights: timm's vit_small_patch14_dinov2.lvd142m model.safetensors at the path below.
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(448, 448))
model = dict(
    type='GuidedEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='TimmFeatureBackbone',
        model_name='vit_small_patch14_dinov2.lvd142m',
        img_size=(448, 448),
        out_indices=(-1, ),
        checkpoint='pretrain/vit_small_patch14_dinov2.lvd142m.safetensors',
        frozen=True,
        final_norm=True),
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
    test_cfg=dict(mode='whole'))

# the probes' data: short side to 448 and a centre crop, scored at the crop, as FeatUp's
# and JAFAR's (named apart from the dataset bases' train_pipeline/test_pipeline)
probe_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),  # reduce_zero_label from the dataset
    dict(type='ResizeShortestEdge', scale=448, max_size=10000),
    dict(type='CenterCrop', crop_size=(448, 448)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
probe_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='ResizeShortestEdge', scale=448, max_size=10000),
    dict(type='CenterCrop', crop_size=(448, 448)),
    dict(type='ResetOriginalShape'),  # predictions scored at the crop
    dict(type='PackSegInputs')
]

# the neck of the probe configs' FeatUp rows: FeatUp's JBU stack for DINOv2 ViT-S/14
# (dinov2_jbu_stack_cocostuff.ckpt, converted with tools/convert_featup_checkpoint.py; it
# includes FeatUp's feature norm), frozen, lifts 32 x 32 to 448 x 448 in four stages;
# it replaces the bilinear neck whole (_delete_)
featup_jbu_neck = dict(
    _delete_=True,
    type='JBUNeck',
    in_channels=384,
    in_index=-1,
    out_stride=1,
    num_stages=4,
    feature_norm=True,
    frozen=True,
    init_cfg=dict(type='Pretrained', checkpoint='pretrain/featup_dinov2_jbu.pth'))

# the necks of the probe configs' AnyUp and NAF rows: the authors' published weights
# (AnyUp's anyup_paper.pth, trained on DINOv2 ViT-S/14 features; NAF's naf_release.pth,
# trained on DINOv3 ViT-B/16 features and applied zero-shot, as in NAF's paper),
# converted with tools/convert_attention_upsampler_checkpoint.py, frozen, lift 32 x 32
# to 448 x 448 in one step guided by the image
anyup_neck = dict(
    _delete_=True,
    type='FeatureUpsamplingNeck',
    in_channels=384,
    in_index=-1,
    upsampler=dict(type='AnyUp'),
    out_stride=1,
    frozen=True,
    init_cfg=dict(type='Pretrained', checkpoint='pretrain/anyup_paper.pth'))
naf_neck = dict(
    _delete_=True,
    type='FeatureUpsamplingNeck',
    in_channels=384,
    in_index=-1,
    upsampler=dict(type='NAF'),
    out_stride=1,
    frozen=True,
    init_cfg=dict(type='Pretrained', checkpoint='pretrain/naf_release.pth'))
