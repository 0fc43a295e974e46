# FeatUp's Table 1 (linear probe), CARAFE row: published 67.1 acc / 42.39 mIoU
# (FeatUp paper, COCO-Stuff-27). Four x2 CARAFE stages (FeatUp: up_kernel 3, 1 group).
# Pretrain the stack with FeatUp's multi-view objective (paper settings):
#   python tools/pretrain_upsampler.py <this config> \
#       --cfg-options model.neck.frozen=False model.neck.init_cfg=None
# and move work_dirs/<this config>/featup_pretrained_upsampler.pth to the path below.
_base_ = ['./dino-vit-s16_bilinear_linear-probe_coco-stuff27-224x224.py']

model = dict(
    neck=dict(
        upsampler=dict(type='CARAFE', up_kernel=3),
        num_stages=4,
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrain/dino16_carafe_stack.pth', prefix='neck.')))
