# FeatUp's JBU upsampler for a frozen DINO ViT-S/16 at 224 x 224 (14 x 14 -> 224 x 224,
# FeatUp's own backbone and size). Weights: model.safetensors of
# https://huggingface.co/timm/vit_small_patch16_224.dino, saved as the checkpoint below.
_base_ = ['./vit-s14-dinov2_featup-jbu-pretrain_448px.py']

image_size = (224, 224)
model = dict(
    data_preprocessor=dict(size=image_size),
    backbone=dict(
        model_name='vit_small_patch16_224.dino',
        img_size=image_size,
        checkpoint='pretrain/vit_small_patch16_224.dino.safetensors'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResize', scale=(2 * 224, 224), ratio_range=(1.0, 1.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
