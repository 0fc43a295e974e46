# JAFAR's linear-probe protocol (also AnyUp's and NAF's), FeatUp row: published
# 60.10 mIoU on COCO-Stuff-27 (JAFAR paper, "FeatUp"), with FeatUp's JBU stack as
# the frozen neck (configs/_base_/models/: featup_jbu_neck).
_base_ = ['./dinov2-vit-s14_bilinear_linear-probe_coco-stuff27-448x448.py']

model = dict(neck={{_base_.featup_jbu_neck}})
