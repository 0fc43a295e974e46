# JAFAR's linear-probe protocol, AnyUp row: the protocol AnyUp's paper scores on
# (arXiv 2510.12764, linear probing table, COCO-Stuff-27), with AnyUp's published
# weights as the frozen neck (configs/_base_/models/: anyup_neck).
_base_ = ['./dinov2-vit-s14_bilinear_linear-probe_coco-stuff27-448x448.py']

model = dict(neck={{_base_.anyup_neck}})
