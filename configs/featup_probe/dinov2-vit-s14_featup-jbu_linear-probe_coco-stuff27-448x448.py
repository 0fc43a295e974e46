# JAFAR's linear-probe protocol (also AnyUp's and NAF's), FeatUp row: published
# 60.10 mIoU on COCO-Stuff-27 (JAFAR paper, "FeatUp").
# FeatUp's JBU stack for DINOv2 ViT-S/14 (dinov2_jbu_stack_cocostuff.ckpt, converted with
# tools/convert_featup_checkpoint.py; it includes FeatUp's feature norm), frozen, lifts
# 32 x 32 to 448 x 448 in four stages.
_base_ = ['./dinov2-vit-s14_bilinear_linear-probe_coco-stuff27-448x448.py']

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
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/featup_dinov2_jbu.pth')))
