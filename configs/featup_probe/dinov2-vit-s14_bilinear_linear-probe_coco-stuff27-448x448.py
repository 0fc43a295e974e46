# JAFAR's linear-probe protocol (also AnyUp's and NAF's), bilinear row: published
# 59.03 mIoU on COCO-Stuff-27 (JAFAR paper, "Bilinear"). The frozen DINOv2 ViT-S/14,
# the frozen neck and the linear probe: configs/_base_/models/; JAFAR's probe
# training: configs/_base_/schedules/.
# COCO-Stuff-27 as in JAFAR: STEGO's curated lists (cocostuff/curated/<split>/
# Coco164kFull_Stuff_Coarse.txt, one image id a line) under data_root.
_base_ = [
    'mmseg::_base_/datasets/coco-stuff164k.py', 'mmseg::_base_/default_runtime.py',
    '../_base_/models/dinov2-vit-s14_linear-probe_448x448.py',
    '../_base_/schedules/linear-probe_adamw-cosine-20e.py'
]

train_dataloader = dict(
    batch_size=2,
    sampler=dict(type='DefaultSampler', shuffle=True),  # epochs, not mmseg's infinite sampler
    dataset=dict(
        type='COCOStuff27Dataset',
        ann_file='curated/train2017/Coco164kFull_Stuff_Coarse.txt',
        pipeline={{_base_.probe_train_pipeline}}))
val_dataloader = dict(
    batch_size=1,
    dataset=dict(
        type='COCOStuff27Dataset',
        ann_file='curated/val2017/Coco164kFull_Stuff_Coarse.txt',
        pipeline={{_base_.probe_test_pipeline}}))
test_dataloader = val_dataloader
