# FeatUp's JBU upsampler for a frozen OpenAI CLIP ViT-B/16 image encoder at 224 x 224
# (14 x 14 -> 224 x 224, 768 channels), with CLIP's own image normalisation. Weights:
# model.safetensors of https://huggingface.co/timm/vit_base_patch16_clip_224.openai, saved
# as the checkpoint below.
_base_ = ['./vit-s16-dino_featup-jbu-pretrain_224px.py']  # its size and pipeline

model = dict(
    data_preprocessor=dict(
        mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323]),
    backbone=dict(
        model_name='vit_base_patch16_clip_224.openai',
        checkpoint='pretrain/vit_base_patch16_clip_224.openai.safetensors'),
    neck=dict(in_channels=768),
    decode_head=dict(in_channels=768, channels=768))
