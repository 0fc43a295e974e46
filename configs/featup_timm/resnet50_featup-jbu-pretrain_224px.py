# FeatUp's JBU upsampler for a frozen ResNet-50 (torchvision's ImageNet weights) at
# 224 x 224: its last stage (stride 32, 7 x 7, 2048 channels) upsampled to the image by
# five x2 JBU stages. Weights: model.safetensors of
# https://huggingface.co/timm/resnet50.tv_in1k, saved as the checkpoint below.
_base_ = ['./vit-s14-dinov2_featup-jbu-pretrain_448px.py']

image_size = (224, 224)
model = dict(
    data_preprocessor=dict(size=image_size),
    backbone=dict(
        model_name='resnet50.tv_in1k',
        img_size=image_size,
        checkpoint='pretrain/resnet50.tv_in1k.safetensors'),
    neck=dict(in_channels=2048, num_stages=5),
    decode_head=dict(in_channels=2048, channels=2048))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResize', scale=(2 * 224, 224), ratio_range=(1.0, 1.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
