"""Any timm model as an mmseg backbone of (B, C, h, w) feature maps, frozen or trainable."""
import contextlib
import difflib
import importlib
import inspect
import os
import pickle
import warnings
from numbers import Integral
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ...file_checks import check_input_file
from ...layers import load_state_dict_strict
from ...layers.argument_checks import check_size
from ...layers.featup_checkpoint import describe_load_error
from ..input_size import fixed_input_size, stride_multiples_around

try:
    import timm
except ImportError:  # optional, as for mmseg's TIMMBackbone: needed only to build one
    timm = None

OWNER = 'TimmFeatureBackbone'
# file endings read with torch.load (anything else that is not .safetensors too)
SAFETENSORS_SUFFIX = '.safetensors'
# how many close timm names an unknown model_name is answered with
NUM_SUGGESTIONS = 5


def _suggest_models(model_name: str) -> List[str]:
    """timm model names close to ``model_name``: those sharing its first word (e.g.
    'vit*', 'convnext*'), pretrained tags included, ranked by similarity."""
    family = model_name.split('_')[0].split('.')[0]
    candidates = timm.list_models(f'{family}*', pretrained=True) + \
        timm.list_models(f'{family}*')
    return difflib.get_close_matches(model_name, candidates or timm.list_models(),
                                     n=NUM_SUGGESTIONS, cutoff=0.5)


def _create_model(model_name: str, img_size: Optional[Tuple[int, int]],
                  model_kwargs: dict) -> nn.Module:
    """timm's ``model_name`` with random weights (nothing downloaded); ``img_size`` goes to
    models with a fixed input size (ViTs), whose constructors take it."""
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f'{OWNER}: model_name must be a timm model name (str), e.g. '
                         f"'vit_small_patch14_dinov2.lvd142m', got {model_name!r}")
    if not timm.is_model(model_name):
        close = _suggest_models(model_name)
        hint = f'; close names: {", ".join(close)}' if close else ''
        raise ValueError(f'{OWNER}: timm {timm.__version__} has no model {model_name!r}'
                         f"{hint} (timm.list_models('pattern*') lists them)")
    if not isinstance(model_kwargs, dict):
        raise ValueError(f'{OWNER}: model_kwargs must be a dict of timm.create_model '
                         f'arguments, got {model_kwargs!r}')
    for reserved in ('pretrained', 'img_size', 'pretrained_cfg_overlay', 'checkpoint_path'):
        if reserved in model_kwargs:
            raise ValueError(f'{OWNER}: model_kwargs must not set {reserved!r}: weights come '
                             'only from `checkpoint`, the input size from `img_size`')
    kwargs = dict(model_kwargs)
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(model_name, allow_unregistered=True)
        if img_size is not None and getattr(pretrained_cfg, 'fixed_input_size', False):
            kwargs['img_size'] = img_size
        return timm.create_model(model_name, pretrained=False, **kwargs)
    except TypeError as err:  # an argument the model's constructor does not take
        raise ValueError(f"{OWNER}: timm's {model_name} does not take model_kwargs "
                         f'{model_kwargs}: {err}') from None
    except RuntimeError as err:  # e.g. an unknown pretrained tag
        tags = timm.list_models(f"{model_name.split('.')[0]}.*", pretrained=True)
        raise ValueError(f'{OWNER}: model_name {model_name!r}: {err}'
                         + (f' Known tags: {", ".join(tags)}' if tags else '')) from None


def _feature_indices(model_name: str, out_indices, num_features: int) -> List[int]:
    """``out_indices`` (an int or a sequence of ints, negative ones counting from the last
    block or stage) as indices from 0."""
    indices = [out_indices] if isinstance(out_indices, Integral) else out_indices
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence) or \
            not indices or any(isinstance(i, bool) or not isinstance(i, Integral)
                               for i in indices):
        raise ValueError(f'{OWNER}: out_indices must be an int or a non-empty sequence of '
                         f'ints, got {out_indices!r}')
    bad = [i for i in indices if not -num_features <= i < num_features]
    if bad:
        raise ValueError(f'{OWNER}: out_indices {tuple(indices)}: {bad[0]} is out of range; '
                         f'{model_name} has {num_features} feature levels (blocks or stages), '
                         f'indices {-num_features} to {num_features - 1}')
    return [int(i) % num_features for i in indices]


def read_timm_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """The state dict in a timm or Hugging Face weights file: ``.safetensors`` (read with
    safetensors), else a PyTorch file read with ``torch.load(weights_only=True)``; a
    ``{'state_dict': ...}`` or ``{'model': ...}`` wrapper and DDP/compile prefixes are
    removed.

    Raises:
        ImportError: for a .safetensors file without the safetensors package.
        ValueError: for a file that is not a checkpoint of tensors.
    """
    source = f'{OWNER}: checkpoint {path}'
    if Path(path).suffix == SAFETENSORS_SUFFIX:
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f'{source}: reading .safetensors files needs the safetensors '
                              'package: pip install safetensors') from None
        try:
            loaded = load_file(str(path), device='cpu')
        except SafetensorError as err:
            raise ValueError(f'{source} is not a readable safetensors file ({err})') from None
    else:
        try:
            loaded = torch.load(path, map_location='cpu', weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError) as err:
            reason = describe_load_error(
                path, err, 'load it yourself and save its state dict (tensors only) with '
                'torch.save or safetensors')
            raise ValueError(f'{OWNER}: checkpoint: {reason}') from None
    if isinstance(loaded, dict):
        loaded = loaded.get('state_dict', loaded.get('model', loaded))
    if not isinstance(loaded, dict) or not loaded or \
            not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f'{source}: expected a state dict of tensors (or a dict holding one '
                         "under 'state_dict' or 'model'), as timm and Hugging Face publish")
    return timm.models.clean_state_dict(loaded)


@MODELS.register_module()
class TimmFeatureBackbone(BaseModule):
    """A timm model's blocks (ViTs) or stages (CNNs) as (B, C, h, w) feature maps, through
    timm's ``forward_intermediates``: ViT class, register and other prefix tokens dropped.

    The model is built with random weights (nothing is downloaded), then ``checkpoint``,
    a local file, is loaded strictly through timm's checkpoint filter for the architecture
    (which, e.g., resizes a ViT's position embedding and converts the original DINOv2 or
    OpenAI CLIP layouts). Blocks after the last requested one and the classifier are
    dropped, so every parameter left is used.

    Input sizes are checked: ``img_size`` when built, each batch when run. A ViT built
    with a fixed ``img_size`` takes only that size (unless built with
    ``model_kwargs=dict(dynamic_img_size=True)``); other models take any multiple of the
    largest stride among the requested maps, so no map is stretched over the image.

    Args:
        model_name: a timm model name, optionally with its pretrained tag (e.g.
            'vit_small_patch14_dinov2.lvd142m'); the tag picks the head size the tag's
            weights have.
        img_size: the input size, an int or (H, W): passed to models with a fixed input
            size (ViTs); for the others, only checked to be a multiple of the stride.
            None: timm's default for the model.
        out_indices: which blocks or stages (``len(model.feature_info)`` of them) give
            maps; negative ones count from the last.
        checkpoint: a local weights file (.safetensors, .pth or .bin), e.g. the
            model.safetensors of the model's Hugging Face page; None keeps the random
            initialisation (with a warning).
        frozen: no gradients (forward under ``torch.no_grad``) and always in eval mode,
            whatever the segmentor's ``train()``; False makes it an ordinary trainable
            backbone.
        final_norm: apply the model's final norm to the maps (where timm's
            ``forward_intermediates`` has one: ViTs' last LayerNorm).
        model_kwargs: more ``timm.create_model`` arguments (e.g. ``depth``,
            ``dynamic_img_size``).

    Attributes:
        out_channels: channels of each map.
        strides: total stride of each map.
        weights_source: the checkpoint path, or None when randomly initialised.

    Raises:
        ValueError: for an unknown model, wrong arguments, an ``img_size`` the stride does
            not divide (naming the nearest that work), or a checkpoint that does not fit.
        OSError: if ``checkpoint`` is not a readable file.
    """

    def __init__(self,
                 model_name: str,
                 img_size: Optional[Union[int, Sequence[int]]] = None,
                 out_indices: Union[int, Sequence[int]] = (-1, ),
                 checkpoint: Optional[Union[str, os.PathLike]] = None,
                 frozen: bool = True,
                 final_norm: bool = True,
                 model_kwargs: Optional[dict] = None):
        super().__init__(init_cfg=None)
        if timm is None:
            raise ImportError(f'{OWNER} needs timm: pip install timm')
        for name, value in (('frozen', frozen), ('final_norm', final_norm)):
            if not isinstance(value, bool):
                raise ValueError(f'{OWNER}: {name} must be True or False, got {value!r}')
        if checkpoint is not None:
            if not isinstance(checkpoint, (str, os.PathLike)) or '://' in str(checkpoint):
                raise ValueError(f'{OWNER}: checkpoint must be the path of a local weights '
                                 f'file (nothing is downloaded), got {checkpoint!r}')
            check_input_file(checkpoint, f'{OWNER}: checkpoint')
        if img_size is not None:
            img_size = check_size(OWNER, 'img_size', img_size)
        self.model_name = model_name
        self.frozen = frozen
        self.model = _create_model(model_name, img_size,
                                   {} if model_kwargs is None else model_kwargs)
        if not hasattr(self.model, 'forward_intermediates'):
            raise ValueError(f"{OWNER}: timm's {model_name} has no forward_intermediates; use "
                             "mmseg's TIMMBackbone (features_only) for it")
        takes_norm = 'norm' in inspect.signature(self.model.forward_intermediates).parameters
        if final_norm and not takes_norm:
            raise ValueError(f"{OWNER}: timm's {model_name} has no final norm option for its "
                             'intermediate features; set final_norm=False')
        self.final_norm = final_norm
        self.norm_kwargs = dict(norm=final_norm) if takes_norm else {}

        info = self.model.feature_info
        self.indices = _feature_indices(model_name, out_indices, len(info))
        self.out_indices = tuple([out_indices] if isinstance(out_indices, Integral)
                                 else out_indices)
        self.out_channels = [int(info[i]['num_chs']) for i in self.indices]
        self.strides = [int(info[i]['reduction']) for i in self.indices]
        self.stride = max(self.strides)  # the grid every requested map tiles the input with
        if img_size is not None:
            self._check_multiple(img_size, 'img_size', 'use img_size=')

        self.weights_source = None if checkpoint is None else str(checkpoint)
        if checkpoint is None:
            self._warn_random_weights()
        else:
            self._load_checkpoint(checkpoint)
        # the taken indices stay absolute: pruning shortens the model, not them
        self.take_indices = sorted(set(self.indices))
        self.model.prune_intermediate_layers(self.take_indices, prune_norm=not final_norm,
                                             prune_head=True)
        self.fixed_size = fixed_input_size(self.model)
        if frozen:
            self.model.requires_grad_(False)
            self.train(False)

    def _check_multiple(self, size: Sequence[int], what: str, advice: str) -> None:
        """Refuses a ``size`` (named ``what``) the stride does not divide, with ``advice``
        followed by the nearest sizes that work."""
        if all(side % self.stride == 0 for side in size):
            return
        below, above = stride_multiples_around(size, self.stride)
        cells = ' x '.join(f'{side / self.stride:g}' for side in size)
        raise ValueError(
            f"{OWNER}: {what} ({size[0]}, {size[1]}) is not a multiple of {self.model_name}'s "
            f'stride {self.stride} at out_indices {self.out_indices}: its features would '
            f'cover {cells} cells and be stretched over the image; {advice}({below[0]}, '
            f'{below[1]}) or ({above[0]}, {above[1]})')

    def _warn_random_weights(self) -> None:
        hub = self.model.pretrained_cfg.get('hf_hub_id')
        where = (f' (e.g. model.safetensors from https://huggingface.co/{hub})' if hub else '')
        use = 'frozen random features are rarely what you want' if self.frozen else \
            'it trains from scratch'
        warnings.warn(
            f'{OWNER}: the weights of {self.model_name} are random (checkpoint=None): {use}. '
            f"Download its weights{where} and name the file: checkpoint='pretrain/"
            f"{self.model_name}.safetensors'", UserWarning, stacklevel=2)

    def _load_checkpoint(self, path) -> None:
        """Loads ``path`` strictly, through timm's checkpoint filter for the architecture
        where it has one."""
        state_dict = read_timm_checkpoint(path)
        module = importlib.import_module(type(self.model).__module__)
        filter_fn = getattr(module, 'checkpoint_filter_fn', None)
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, self.model)
        load_state_dict_strict(self.model, state_dict,
                               f'{OWNER}: checkpoint {path} (for {self.model_name})')

    def check_input_size(self, size: Sequence[int]) -> None:
        """Refuses (H, W) inputs the model does not take, naming the sizes it takes."""
        height, width = (int(n) for n in size)
        if self.fixed_size is not None and (height, width) != self.fixed_size:
            fixed = self.fixed_size
            raise ValueError(
                f'{OWNER}: {self.model_name} was built for {fixed[0]} x {fixed[1]} inputs '
                f'(img_size), got {height} x {width}; resize the images to {fixed[0]} x '
                f'{fixed[1]} (e.g. the data preprocessor\'s size), or build it with that '
                'img_size or with model_kwargs=dict(dynamic_img_size=True)')
        self._check_multiple((height, width), 'input size', 'resize or pad the images to ')

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, 3, H, W) images -> one (B, C, H / stride, W / stride) map per out index."""
        self.check_input_size(images.shape[-2:])
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            maps = self.model.forward_intermediates(images, indices=self.take_indices,
                                                    output_fmt='NCHW', intermediates_only=True,
                                                    **self.norm_kwargs)
        by_index = dict(zip(self.take_indices, maps))
        return tuple(by_index[i] for i in self.indices)

    def train(self, mode: bool = True) -> 'TimmFeatureBackbone':
        """Sets the training mode, except that a frozen backbone stays in eval mode (its
        norms and dropouts behave as in inference)."""
        return super().train(mode and not self.frozen)

    def init_weights(self) -> None:
        """Keeps the weights as built: random or the checkpoint's. (mmengine's default
        would call timm's own ``init_weights`` and overwrite a loaded checkpoint.)"""
        self._is_init = True
