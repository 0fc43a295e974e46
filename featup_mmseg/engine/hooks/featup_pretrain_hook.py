"""FeatUp's self-supervised upsampler pretraining (paper sections 3.1-3.3) as an mmengine hook,
with AnyUp's and NAF's objectives for a neck's upsampler as alternatives."""
import warnings
from dataclasses import dataclass
from pathlib import Path
from functools import partial
from typing import Callable, Iterator, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.dist import get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import OPTIMIZERS
from mmengine.runner import find_latest_checkpoint
from mmseg.registry import HOOKS

from ...file_checks import check_output_file
from ...layers.argument_checks import check_choice, check_int
from ...layers.multiview import (ReconstructionCriterion, check_criterion_arguments,
                                 check_view_arguments, multiview_reconstruction_loss)
from ...layers.upsampler_objectives import anyup_objective, check_objective, naf_objective
from ...models.backbone_record import (backbone_record, backbone_weights_source,
                                       random_backbone_message)

META_KEY = 'featup_pretrained'
TARGETS = ('auto', 'neck', 'decode_head')


@dataclass
class PretrainTarget:
    """An upsampler of the model to pretrain.

    Attributes:
        name: where it lives ('neck' or 'decode_head').
        upsampler: the module whose parameters are trained.
        saved: the module saved after pretraining, under ``prefix`` (the whole JBUNeck,
            so its checkpoint loads strictly with ``prefix='neck.'``; a head's stages).
        feat_dims: channels of each upsampled map.
        features: images -> the frozen low-res maps.
        upsample: (maps, images) -> high-res versions of the maps at ``reconstructed``.
        reconstructed: indices of the upsampled maps.
        upsample_to: (map, image, output size) -> the map upsampled to that size, guided by
            the image (a neck's; None for a head's stages), for AnyUp's and NAF's
            objectives.
    """
    name: str
    upsampler: nn.Module
    saved: nn.Module
    prefix: str
    feat_dims: List[int]
    features: Callable
    upsample: Callable
    reconstructed: List[int]
    upsample_to: Optional[Callable] = None

    def state_dict(self) -> dict:
        return {self.prefix + key: value for key, value in self.saved.state_dict().items()}


def find_targets(model: nn.Module, target: str) -> List[PretrainTarget]:
    """The learned upsamplers of ``model``: an image-guided neck's (JBUNeck, or a
    FeatureUpsamplingNeck's stack of guided stages) and the guided stages of a
    FeatUpSegformerHead.

    Raises:
        ValueError: if it has none, or if one is frozen (nothing would learn).
    """
    targets = []
    neck = getattr(model, 'neck', None)
    # an interpolating neck has an empty upsampler: nothing to learn
    if target in ('auto', 'neck') and getattr(neck, 'requires_image', False) \
            and any(True for _ in getattr(neck, 'upsampler', nn.Module()).parameters()):

        def neck_features(images):
            return [neck.select(model.backbone(images))]

        def neck_upsample(maps, images):
            # channels-last, as the views and the downsampler read the features
            return [neck.upsample(maps[0], images, memory_format=torch.channels_last)]

        def neck_upsample_to(features, image, output_size):
            return neck.upsample(features, image, output_size=output_size)

        targets.append(PretrainTarget('neck', neck.upsampler, neck, 'neck.', [neck.in_channels],
                                      neck_features, neck_upsample, [0], neck_upsample_to))
    head = getattr(model, 'decode_head', None)
    # FeatUpSegformerHead with guided stages (its bilinear twin has only interpolations)
    if target in ('auto', 'decode_head') and hasattr(head, 'upsample_levels') and \
            getattr(head, 'guided', False):
        levels = len(head.guided_stages) + 1
        targets.append(
            PretrainTarget('decode_head', head.guided_stages, head.guided_stages,
                           'decode_head.guided_stages.', [head.channels] * (levels - 1),
                           lambda images: head.project(model.extract_feat(images)),
                           lambda maps, images: head.upsample_levels(maps),
                           list(range(1, levels))))
    if not targets:
        raise ValueError(
            f'FeatUpPretrainHook(target={target!r}): the model has no learned upsampler to '
            'pretrain; it needs a JBUNeck or a FeatureUpsamplingNeck with a guided '
            'upsampler (with GuidedEncoderDecoder), or a FeatUpSegformerHead with JBU stages')
    for found in targets:
        if getattr(found.saved, 'frozen', False):
            raise ValueError(
                f'FeatUpPretrainHook: the {found.name} is frozen (frozen=True: no gradients, '
                f'nothing would learn); pretrain with model.{found.name}.frozen=False')
    return targets


def _is_optimizer_cfg(cfg) -> bool:
    """Whether ``cfg`` is a dict whose type names (or is) an optimizer OPTIMIZERS builds."""
    if not isinstance(cfg, dict):
        return False
    kind = cfg.get('type')
    if isinstance(kind, type):
        return issubclass(kind, torch.optim.Optimizer)
    return isinstance(kind, str) and OPTIMIZERS.get(kind) is not None


@HOOKS.register_module()
class FeatUpPretrainHook(Hook):
    """Pretrains the model's JBU upsampler(s) with FeatUp's multi-view objective before
    training starts (after weight init and any resume, so pretrained backbones are loaded).

    The backbone (and, for the head's stages, the level projections) stay frozen in eval
    mode; only the upsampler and the objective's own downsampler and uncertainty network
    learn, on images drawn from the training dataloader. Under DDP the learned weights
    start from rank 0's and gradients are averaged over ranks, so every rank ends with the
    same upsampler. The upsampler weights are saved to ``work_dir/checkpoint_name``; the
    training checkpoints record that pretraining is done, so a resumed run skips it.

    ``objective='anyup'`` or ``'naf'`` trains a neck's upsampler (FeatUp's JBU stack, AnyUp
    or NAF) with that method's objective instead
    (:mod:`featup_mmseg.layers.upsampler_objectives`: the backbone's features of the image
    at half size, upsampled, against its features at full size or of half-size crops);
    the views, the downsampler and the uncertainty are FeatUp's objective's only, and
    the default optimizer is the methods' AdamW (lr 2e-4, weight decay 1e-5). Their
    backbone must take both sizes (a timm ViT: ``model_kwargs=dict(dynamic_img_size=True)``).

    Args:
        steps: optimisation steps (paper: 2000).
        images_per_step: images per step (paper: 4).
        num_jitters: views per image (paper: 2; FeatUp's public config uses 5).
        max_pad: reflect padding of the views, pixels (paper: 30).
        max_zoom: largest zoom of the views (paper: 2.0).
        downsampler: 'attention' (paper) or 'simple'.
        kernel_size: downsampler window (paper: 16).
        proj_dim: random projection dimension (paper: 30).
        uncertainty: learn the per-pixel uncertainty (paper: on).
        tv_weight: total-variation prior on feature magnitudes (paper, JBU: 0).
        optimizer: optimizer config without params (default: FeatUp's NAdam, lr 1e-3; for
            objective 'anyup' or 'naf' AdamW, lr 2e-4, weight decay 1e-5).
        target: which upsampler: 'auto' (all found), 'neck' or 'decode_head'.
        log_interval: steps between loss logs.
        checkpoint_name: file name of the saved upsampler weights in the work dir.
        objective: 'featup' (the paper's multi-view reconstruction), 'anyup' or 'naf'.

    Every argument is checked here, when the config is built, not when pretraining starts.
    """
    priority = 'VERY_HIGH'

    def __init__(self, steps: int = 2000, images_per_step: int = 4, num_jitters: int = 2,
                 max_pad: int = 30, max_zoom: float = 2.0, downsampler: str = 'attention',
                 kernel_size: int = 16, proj_dim: int = 30, uncertainty: bool = True,
                 tv_weight: float = 0.0, optimizer: Optional[dict] = None,
                 target: str = 'auto', log_interval: int = 50,
                 checkpoint_name: str = 'featup_pretrained_upsampler.pth',
                 objective: str = 'featup'):
        owner = 'FeatUpPretrainHook'
        check_choice(owner, 'target', target, TARGETS)
        self.objective = check_objective(owner, objective)
        if objective != 'featup' and target == 'decode_head':
            raise ValueError(f"{owner}: objective {objective!r} trains a neck's upsampler "
                             f"(target='neck' or 'auto'), not a decode head's stages")
        for name, value in (('steps', steps), ('images_per_step', images_per_step),
                            ('num_jitters', num_jitters), ('log_interval', log_interval)):
            check_int(owner, name, value)
        check_view_arguments(owner, max_pad, max_zoom)
        check_criterion_arguments(owner, downsampler, kernel_size, proj_dim, tv_weight)
        check_choice(owner, 'uncertainty', uncertainty, (True, False))
        if optimizer is None:
            optimizer = dict(type='NAdam', lr=1e-3) if objective == 'featup' else \
                dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-5)
        self.optimizer_cfg = optimizer
        if not _is_optimizer_cfg(self.optimizer_cfg):
            raise ValueError(f'{owner}: optimizer must be a dict whose type is an optimizer '
                             "registered in mmengine's OPTIMIZERS (e.g. dict(type='NAdam', "
                             f"lr=1e-3)), got {optimizer!r}")
        self.optimizer_cfg = dict(self.optimizer_cfg)
        if not isinstance(checkpoint_name, str) or not checkpoint_name or \
                Path(checkpoint_name).name != checkpoint_name:
            raise ValueError(f'{owner}: checkpoint_name must be a file name (saved in the work '
                             f'dir), got {checkpoint_name!r}')
        self.steps = steps
        self.images_per_step = images_per_step
        self.num_jitters = num_jitters
        self.max_pad = max_pad
        self.max_zoom = max_zoom
        self.criterion_cfg = dict(downsampler=downsampler, kernel_size=kernel_size,
                                  proj_dim=proj_dim, uncertainty=uncertainty,
                                  tv_weight=tv_weight)
        self.target = target
        self.log_interval = log_interval
        self.checkpoint_name = checkpoint_name
        self.pretrained = False
        self.losses: List[float] = []

    # -- resume: the flag travels in the training checkpoints' meta ------------------------

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if checkpoint.get('meta', {}).get(META_KEY):
            self.pretrained = True

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.pretrained:
            checkpoint.setdefault('meta', {})[META_KEY] = True

    def before_train(self, runner) -> None:
        if self.pretrained:
            runner.logger.info('FeatUp pretraining: already done (checkpoint meta), skipped')
            return
        self.pretrain(runner)

    # -- the pretraining loop ----------------------------------------------------------------

    def pretrain(self, runner) -> List[float]:
        """Runs the pretraining on ``runner``'s model and data; returns the step losses.

        Raises:
            OSError: before any step, if the weights could not be saved where they go.
        """
        if is_main_process():
            check_output_file(self._path(runner), 'FeatUpPretrainHook: checkpoint_name')
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        # AnyUp's and NAF's objectives train a neck's upsampler only
        targets = find_targets(model, self.target if self.objective == 'featup' else 'neck')
        backbone_cfg, load_from = self._backbone_source(runner)
        if backbone_weights_source(backbone_cfg, load_from) is None:
            message = random_backbone_message('FeatUp pretraining', backbone_cfg)
            warnings.warn(message, UserWarning)
            runner.logger.warning(message)
        device = next(model.parameters()).device
        criteria = [
            nn.ModuleList(ReconstructionCriterion(dim, **self.criterion_cfg)
                          for dim in target.feat_dims).to(device) for target in targets
        ] if self.objective == 'featup' else []
        step_loss = self._featup_loss if self.objective == 'featup' else partial(
            self._method_loss, model)
        params = [p for target in targets for p in target.upsampler.parameters()]
        params += [p for criterion in criteria for p in criterion.parameters()]
        world_size = get_world_size()
        if world_size > 1:
            for param in params:
                dist.broadcast(param.data, src=0)
        optimizer = OPTIMIZERS.build(dict(self.optimizer_cfg, params=params))

        was_training = model.training
        model.eval()  # frozen backbone and projections
        for module in [t.upsampler for t in targets] + criteria:
            module.train()
        images = self._images(runner, model)
        names = ', '.join(target.name for target in targets)
        views = f' x {self.num_jitters} views' if self.objective == 'featup' else ''
        runner.logger.info(f'FeatUp pretraining of the {names} upsampler ({self.objective}\'s '
                           f'objective): {self.steps} steps of {self.images_per_step} '
                           f'images{views}')
        for step in range(1, self.steps + 1):
            batch = next(images)
            optimizer.zero_grad()
            loss = step_loss(batch, targets, criteria)
            if world_size > 1:
                for param in params:
                    if param.grad is not None:
                        dist.all_reduce(param.grad)
                        param.grad /= world_size
            optimizer.step()
            self.losses.append(loss.item())
            if step % self.log_interval == 0 or step in (1, self.steps):
                runner.logger.info(f'FeatUp pretraining [{step}/{self.steps}]  '
                                   f'loss: {self.losses[-1]:.4f}')
        optimizer.zero_grad(set_to_none=True)  # leave no gradients to the training's first step
        model.train(was_training)
        if world_size > 1:
            self._check_ranks_agree(runner, [t.upsampler for t in targets], world_size)
        self.pretrained = True
        self._save(runner, targets)
        return self.losses

    def _featup_loss(self, batch: torch.Tensor, targets: List[PretrainTarget],
                     criteria: List[nn.ModuleList]) -> torch.Tensor:
        """FeatUp's multi-view loss: the mean over targets, backpropagated view by view
        (one view's graph at a time)."""
        return sum(
            multiview_reconstruction_loss(batch, target.features, target.upsample,
                                          target.reconstructed, criterion, self.num_jitters,
                                          self.max_pad, self.max_zoom,
                                          backward_weight=1 / len(targets))
            for target, criterion in zip(targets, criteria)) / len(targets)

    def _method_loss(self, model: nn.Module, batch: torch.Tensor,
                     targets: List[PretrainTarget], criteria: list) -> torch.Tensor:
        """AnyUp's or NAF's loss for the neck's upsampler, backpropagated."""
        target, = targets

        def features(images):
            return target.features(images)[0]

        if self.objective == 'naf':
            loss = naf_objective(batch, features, target.upsample_to)
        else:
            # the images' normalisation, for the augmentation (none: pixels in 0..255)
            mean = getattr(model.data_preprocessor, 'mean', None)
            std = getattr(model.data_preprocessor, 'std', None)
            loss = anyup_objective(batch, features, target.upsample_to,
                                   pixel_mean=torch.zeros(3) if mean is None else mean,
                                   pixel_std=torch.ones(3) if std is None else std)
        loss.backward()
        return loss.detach()

    @staticmethod
    def _check_ranks_agree(runner, upsamplers: List[nn.Module], world_size: int) -> None:
        """Fails loudly if the ranks ended with different upsampler weights."""
        weights = torch.cat([p.detach().flatten() for m in upsamplers for p in m.parameters()])
        reference = weights.clone()
        dist.broadcast(reference, src=0)
        difference = (weights - reference).abs().max()
        dist.all_reduce(difference, op=dist.ReduceOp.MAX)
        if difference > 0:
            raise RuntimeError('FeatUp pretraining: the ranks ended with different upsampler '
                               f'weights (max difference {difference.item():.3g})')
        runner.logger.info('FeatUp pretraining: upsampler weights identical on all '
                           f'{world_size} ranks')

    def _images(self, runner, model) -> Iterator[torch.Tensor]:
        """Batches of ``images_per_step`` normalised training images, endlessly."""
        pending: List[torch.Tensor] = []
        for data in self._batches(runner):
            with torch.no_grad():
                pending.extend(model.data_preprocessor(data, training=True)['inputs'])
            while len(pending) >= self.images_per_step:
                yield torch.stack(pending[:self.images_per_step])
                pending = pending[self.images_per_step:]

    @staticmethod
    def _batches(runner) -> Iterator[dict]:
        # An iteration-based loop already holds an endless iterator over the dataloader:
        # share it, since a second iterator over persistent workers can stall the first.
        iterator = getattr(runner.train_loop, 'dataloader_iterator', None)
        while True:
            if iterator is not None:
                yield next(iterator)
            else:
                yield from runner.train_dataloader

    def _save(self, runner, targets: List[PretrainTarget]) -> None:
        if not is_main_process():
            return
        state_dict = {k: v for target in targets for k, v in target.state_dict().items()}
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        meta = dict(steps=self.steps, losses=self.losses, targets=[t.name for t in targets],
                    objective=self.objective,
                    backbone=backbone_record(model.backbone, *self._backbone_source(runner)),
                    **self.criterion_cfg)
        path = self._path(runner)
        torch.save({'state_dict': state_dict, 'meta': {'featup_pretrain': meta}}, path)
        runner.logger.info(f'FeatUp pretraining: upsampler weights saved to {path}')

    @staticmethod
    def _backbone_source(runner):
        """The backbone's config and the checkpoint the run loads, which name its weights."""
        cfg = runner.cfg
        load_from = cfg.get('load_from')
        if not load_from and cfg.get('resume') is True:
            # mmengine resumes from the latest checkpoint in the work_dir, if there is one
            load_from = find_latest_checkpoint(runner.work_dir)
        return cfg.get('model', {}).get('backbone'), load_from

    def _path(self, runner) -> Path:
        return Path(runner.work_dir) / self.checkpoint_name
