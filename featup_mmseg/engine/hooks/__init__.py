from .featup_pretrain_hook import FeatUpPretrainHook, find_targets

__all__ = ['FeatUpPretrainHook', 'find_targets']
