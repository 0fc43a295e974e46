# FeatUp's JBU upsampler for a frozen ConvNeXt-T (ImageNet-1k) at 224 x 224: its last
# stage (stride 32, 7 x 7, 768 channels) upsampled to the image by five x2 JBU stages.
# Weights: model.safetensors of https://huggingface.co/timm/convnext_tiny.fb_in1k, saved as
# the checkpoint below.
_base_ = ['./vit-s14-dinov2_featup-jbu-pretrain_448px.py']

image_size = (224, 224)
model = dict(
    data_preprocessor=dict(size=image_size),
    backbone=dict(
        model_name='convnext_tiny.fb_in1k',
        img_size=image_size,
        checkpoint='pretrain/convnext_tiny.fb_in1k.safetensors'),
    neck=dict(in_channels=768, num_stages=5),
    decode_head=dict(in_channels=768, channels=768))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResize', scale=(2 * 224, 224), ratio_range=(1.0, 1.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
