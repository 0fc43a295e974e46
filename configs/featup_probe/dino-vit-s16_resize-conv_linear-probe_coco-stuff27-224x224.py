# FeatUp's Table 1 (linear probe), resize-conv row: published 67.72 acc / 42.95 mIoU
# (FeatUp paper, COCO-Stuff-27). Four x2 resize-conv stages, each guided by the image
# pooled to its size as FeatUp stacks its baselines; featup_mmseg's ResizeConv is the
# Table 2 one (bilinear resize + conv), FeatUp's Table 1 variant also concatenates the
# pooled image and adds a residual. Pretrain the
# stack with FeatUp's multi-view objective (paper settings):
#   python tools/pretrain_upsampler.py <this config> \
#       --cfg-options model.neck.frozen=False model.neck.init_cfg=None
# and move work_dirs/<this config>/featup_pretrained_upsampler.pth to the path below.
_base_ = ['./dino-vit-s16_bilinear_linear-probe_coco-stuff27-224x224.py']

model = dict(
    neck=dict(
        upsampler=dict(type='ResizeConv', kernel_size=1),
        num_stages=4,
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrain/dino16_resize-conv_stack.pth', prefix='neck.')))
