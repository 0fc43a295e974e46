# JAFAR's linear-probe protocol (also AnyUp's and NAF's), bilinear row: published
# 59.37 mIoU on Cityscapes (19 classes) (JAFAR paper, "Bilinear"). The frozen DINOv2 ViT-S/14,
# the frozen neck and the linear probe: configs/_base_/models/; JAFAR's probe
# training: configs/_base_/schedules/.
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py', 'mmseg::_base_/default_runtime.py',
    '../_base_/models/dinov2-vit-s14_linear-probe_448x448.py',
    '../_base_/schedules/linear-probe_adamw-cosine-20e.py'
]

model = dict(decode_head=dict(num_classes=19))
train_dataloader = dict(
    batch_size=2,
    sampler=dict(type='DefaultSampler', shuffle=True),  # epochs, not mmseg's infinite sampler
    dataset=dict(pipeline={{_base_.probe_train_pipeline}}))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline={{_base_.probe_test_pipeline}}))
test_dataloader = val_dataloader
