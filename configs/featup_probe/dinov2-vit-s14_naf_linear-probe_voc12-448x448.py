# JAFAR's linear-probe protocol, NAF row: the protocol NAF's paper scores on
# (arXiv 2511.18452, semantic segmentation table, Pascal VOC 2012), with NAF's published
# weights as the frozen neck (configs/_base_/models/: naf_neck).
_base_ = ['./dinov2-vit-s14_bilinear_linear-probe_voc12-448x448.py']

model = dict(neck={{_base_.naf_neck}})
