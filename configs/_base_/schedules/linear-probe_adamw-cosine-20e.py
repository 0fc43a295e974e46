# JAFAR's probe training (evaluation/train_probes.py): AdamW (lr 5e-4, weight decay
# 1e-5), cosine over 20 epochs, batch 2 (mmseg's 80k schedule otherwise).
_base_ = ['mmseg::_base_/schedules/schedule_80k.py']

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-5))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=20, by_epoch=True, convert_to_iter_based=True)
]
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=20, val_interval=20)
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=20))
