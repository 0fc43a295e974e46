"""mmengine integration: FeatUp's pretraining hook, safe loading of mmengine's own
checkpoints under torch >= 2.6, distributed runs on CPU, and the configuration steps of
the command-line tools."""
from .checkpoint_globals import allow_mmengine_checkpoint_globals
from .cpu_distributed import prepare_cpu_distributed
from .hooks import FeatUpPretrainHook
from .run_config import add_run_arguments, load_run_config

allow_mmengine_checkpoint_globals()

__all__ = [
    'FeatUpPretrainHook', 'add_run_arguments', 'allow_mmengine_checkpoint_globals',
    'load_run_config', 'prepare_cpu_distributed'
]
