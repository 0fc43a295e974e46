# FeatUp's JBU upsampler for a frozen ConvNeXt-T (ImageNet-1k) at 224 x 224: its last
# stage (stride 32, 7 x 7, 768 channels) upsampled to the image by five x2 JBU stages.
# Weights: model.safetensors of https://huggingface.co/timm/convnext_tiny.fb_in1k, saved as
# the checkpoint below.
_base_ = ['./vit-s16-dino_featup-jbu-pretrain_224px.py']  # its size and pipeline

model = dict(
    backbone=dict(
        model_name='convnext_tiny.fb_in1k',
        checkpoint='pretrain/convnext_tiny.fb_in1k.safetensors'),
    neck=dict(in_channels=768, num_stages=5),
    decode_head=dict(in_channels=768, channels=768))
