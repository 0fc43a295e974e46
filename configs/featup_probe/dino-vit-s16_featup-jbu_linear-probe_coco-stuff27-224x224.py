# FeatUp's Table 1 (linear probe), FeatUp (JBU) row: published 68.77 acc / 43.41 mIoU
# (FeatUp paper, COCO-Stuff-27). FeatUp's pretrained JBU stack for DINO ViT-S/16
# (dino16_jbu_stack_cocostuff.ckpt, converted with tools/convert_featup_checkpoint.py;
# it includes FeatUp's feature norm), frozen, lifts 14 x 14 to 224 x 224.
_base_ = ['./dino-vit-s16_bilinear_linear-probe_coco-stuff27-224x224.py']

model = dict(
    neck=dict(
        _delete_=True,
        type='JBUNeck',
        in_channels=384,
        in_index=-1,
        out_stride=1,
        num_stages=4,
        feature_norm=True,
        frozen=True,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/featup_dino16_jbu.pth')))
