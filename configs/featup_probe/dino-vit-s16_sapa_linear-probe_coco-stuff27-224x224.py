# FeatUp's Table 1 (linear probe), SAPA row: published 65.69 acc / 41.17 mIoU
# (FeatUp paper, COCO-Stuff-27). Four x2 SAPA stages, each guided by the image pooled to
# its size (FeatUp: up_kernel 5, embedding dim 64). Pretrain the
# stack with FeatUp's multi-view objective (paper settings):
#   python tools/pretrain_upsampler.py <this config> \
#       --cfg-options model.neck.frozen=False model.neck.init_cfg=None
# and move work_dirs/<this config>/featup_pretrained_upsampler.pth to the path below.
_base_ = ['./dino-vit-s16_bilinear_linear-probe_coco-stuff27-224x224.py']

model = dict(
    neck=dict(
        upsampler=dict(type='SAPA', up_kernel=5, embedding_dim=64),
        num_stages=4,
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrain/dino16_sapa_stack.pth', prefix='neck.')))
