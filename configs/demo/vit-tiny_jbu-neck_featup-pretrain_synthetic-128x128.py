# Demo-sized FeatUp pretraining on CPU: a tiny, randomly initialised ViT with a JBU neck
# (feature norm, as FeatUp) on the embedded synthetic dataset. FeatUpPretrainHook trains
# the neck's upsampler before the (short) supervised training; or run only the
# pretraining: python tools/pretrain_upsampler.py <this config>
_base_ = ['./segformer_mit-b0_bilinear_synthetic-128x128.py']

model = dict(
    _delete_=True,
    type='GuidedEncoderDecoder',
    data_preprocessor={{_base_.data_preprocessor}},
    backbone=dict(
        type='VisionTransformer',
        img_size=(128, 128),
        patch_size=16,
        embed_dims=64,
        num_layers=2,
        num_heads=2,
        out_indices=(1, ),
        final_norm=True),
    neck=dict(type='JBUNeck', in_channels=64, out_stride=1, feature_norm=True),
    decode_head=dict(
        type='FCNHead',
        in_channels=64,
        in_index=-1,
        channels=64,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=5,
        norm_cfg=dict(type='BN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
custom_hooks = [
    dict(
        type='FeatUpPretrainHook',
        steps=40,
        images_per_step=4,
        num_jitters=2,
        max_pad=16,
        max_zoom=2.0,
        downsampler='attention',
        kernel_size=16,
        log_interval=10)
]
