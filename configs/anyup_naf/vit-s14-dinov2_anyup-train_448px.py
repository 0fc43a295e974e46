# AnyUp trained (or fine-tuned) for a frozen timm backbone, here DINOv2 ViT-S/14 at
# 448 x 448, with AnyUp's own objective (FeatUpPretrainHook(objective='anyup'): the
# backbone's features of the image at half size upsampled to its full-size grid and
# compared, cut at 4 random half-size crops, with the crops' features; plus AnyUp's
# augmentation and downsampling consistency terms) on a folder of your images (no labels;
# data/my_images):
#
#   python tools/pretrain_upsampler.py configs/anyup_naf/vit-s14-dinov2_anyup-train_448px.py
#
# AnyUp's recipe: batch 4, 100k steps, AdamW lr 2e-4, weight decay 1e-5. To fine-tune the
# published weights instead, add init_cfg=dict(type='Pretrained',
# checkpoint='pretrain/anyup_paper.pth') to the neck (converted with
# tools/convert_attention_upsampler_checkpoint.py) and lower the steps. Backbone weights
# (nothing is downloaded): model.safetensors of
# https://huggingface.co/timm/vit_small_patch14_dinov2.lvd142m, saved as the checkpoint
# below. The result, work_dirs/<this config>/anyup_trained_upsampler.pth, loads into
# the neck with init_cfg=dict(type='Pretrained', checkpoint=..., prefix='neck.').
_base_ = ['../featup_timm/vit-s14-dinov2_featup-jbu-pretrain_448px.py']

model = dict(
    # the objective runs the backbone at half the image size too
    backbone=dict(model_kwargs=dict(dynamic_img_size=True)),
    neck=dict(
        _delete_=True,  # replaces the JBU neck whole
        type='FeatureUpsamplingNeck',
        in_channels=384,
        in_index=-1,
        upsampler=dict(type='AnyUp'),
        out_stride=1))
custom_hooks = [
    dict(
        type='FeatUpPretrainHook',
        objective='anyup',
        steps=100000,
        images_per_step=4,
        optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-5),
        log_interval=100,
        checkpoint_name='anyup_trained_upsampler.pth')
]
