"""mmengine integration: FeatUp's pretraining hook (registered on import), safe loading of
mmengine's own checkpoints where torch.load defaults to weights_only (applied by
:mod:`featup_mmseg.plugin`), distributed runs on CPU, and the configuration steps of the
command-line tools."""
from .checkpoint_globals import (allow_mmengine_checkpoint_globals,
                                 torch_refuses_mmengine_checkpoints)
from .cpu_distributed import prepare_cpu_distributed
from .hooks import FeatUpPretrainHook
from .run_config import add_run_arguments, load_run_config

__all__ = [
    'FeatUpPretrainHook', 'add_run_arguments', 'allow_mmengine_checkpoint_globals',
    'load_run_config', 'prepare_cpu_distributed', 'torch_refuses_mmengine_checkpoints'
]
