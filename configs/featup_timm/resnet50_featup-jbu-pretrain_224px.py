# FeatUp's JBU upsampler for a frozen ResNet-50 (torchvision's ImageNet weights) at
# 224 x 224: its last stage (stride 32, 7 x 7, 2048 channels) upsampled to the image by
# five x2 JBU stages. Weights: model.safetensors of
# https://huggingface.co/timm/resnet50.tv_in1k, saved as the checkpoint below.
_base_ = ['./vit-s16-dino_featup-jbu-pretrain_224px.py']  # its size and pipeline

model = dict(
    backbone=dict(
        model_name='resnet50.tv_in1k',
        checkpoint='pretrain/resnet50.tv_in1k.safetensors'),
    neck=dict(in_channels=2048, num_stages=5),
    decode_head=dict(in_channels=2048, channels=2048))
