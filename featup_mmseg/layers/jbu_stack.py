"""FeatUp's image-guided JBU stack (paper section 3.2), at any output size."""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .argument_checks import check_int
from .jbu_stage import JBUStage, residual_conv1x1
from .pooling import average_pool

Size = Union[int, Sequence[int]]


def stage_sizes(input_size: Sequence[int], output_size: Sequence[int],
                num_stages: int) -> List[Tuple[int, int]]:
    """Output size of each stage: a geometric progression from input to output size.

    Stage s of n reaches round(input * (output / input) ** (s / n)) in each dimension,
    and the last stage exactly ``output_size``. A power-of-two ratio gives exact x2 steps
    (FeatUp's 14 -> 28 -> 56 -> 112 -> 224); other ratios spread evenly, e.g. 16 -> 224
    in four stages is 16 -> 31 -> 60 -> 116 -> 224 and 7 -> 224 is 7 -> 17 -> 40 -> 94 -> 224.
    """
    sizes = []
    for stage in range(1, num_stages + 1):
        sizes.append(tuple(
            int(round(n_in * (n_out / n_in)**(stage / num_stages)))
            for n_in, n_out in zip(input_size, output_size)))
    sizes[-1] = tuple(output_size)
    return sizes


def _pair(size: Size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


class JBUStack(nn.Module):
    """Image-guided stack of JBU stages up1..upN, then a residual 1x1 fixup.

    Each stage is guided by the image average-pooled to that stage's output size; after
    the last, out + 0.1 * fixup_proj(out) with fixup_proj = Dropout2d(0.2), Conv1x1(C->C).
    With the defaults this is FeatUp's JBUStack (4 stages, Cg = 3, key_dim 32, radius 3)
    and its published weights load unchanged.

    ``forward(source, guidance)`` upsamples x2 per stage (x16 in total, as FeatUp); pass
    ``output_size`` (or ``scale_factor``) for any other size, e.g. 16 -> 224 for a
    patch-14 backbone at 224 px, 7 -> 224, non-square maps, or the image's own size. The
    stages then follow the geometric progression of :func:`stage_sizes`.

    Args:
        feat_dim: channels C of the features to upsample.
        num_stages: number of JBU stages.
        guidance_dim, key_dim, radius, range_kernel: as in :class:`JBUStage`.
    """

    def __init__(self, feat_dim: int, num_stages: int = 4, guidance_dim: int = 3,
                 key_dim: int = 32, radius: int = 3, range_kernel: str = 'softmax'):
        super().__init__()
        self.feat_dim = check_int('JBUStack', 'feat_dim', feat_dim)
        self.num_stages = check_int('JBUStack', 'num_stages', num_stages)
        for index in range(1, self.num_stages + 1):
            self.add_module(f'up{index}',
                            JBUStage(guidance_dim, key_dim, radius, range_kernel=range_kernel))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2),
                                        nn.Conv2d(self.feat_dim, self.feat_dim, 1))

    @property
    def stages(self) -> List[JBUStage]:
        return [getattr(self, f'up{index}') for index in range(1, self.num_stages + 1)]

    @property
    def min_stage_size(self) -> int:
        """The smallest output height and width of any stage (its guidance's minimum)."""
        return self.up1.min_guidance_size

    def stages_fit(self, input_size: Sequence[int], output_size: Sequence[int]) -> bool:
        """Whether every stage from ``input_size`` to ``output_size`` (any number of
        dimensions) reaches at least ``min_stage_size``."""
        return all(side >= self.min_stage_size
                   for size in stage_sizes(input_size, output_size, self.num_stages)
                   for side in size)

    def output_size(self, input_size: Sequence[int], output_size: Optional[Size] = None,
                    scale_factor: Optional[float] = None) -> Tuple[int, int]:
        """The output size forward() produces for these arguments."""
        if output_size is not None and scale_factor is not None:
            raise ValueError('JBUStack: give output_size or scale_factor, not both')
        if output_size is not None:
            size = _pair(output_size)
        else:
            factor = 2**self.num_stages if scale_factor is None else scale_factor
            size = tuple(int(round(n * factor)) for n in input_size)
        if len(size) != 2 or any(out < n for out, n in zip(size, input_size)):
            raise ValueError(f'JBUStack: the output size must be (H, W) no smaller than the '
                             f'input {tuple(input_size)}, got {size}')
        return size

    def forward(self, source: torch.Tensor, guidance: torch.Tensor,
                output_size: Optional[Size] = None, scale_factor: Optional[float] = None,
                memory_format: torch.memory_format = torch.contiguous_format
                ) -> torch.Tensor:
        """Upsamples source (B, C, h, w) guided by guidance (B, Cg, H, W), e.g. the image,
        into a tensor of ``memory_format`` (contiguous or channels-last: the fixup's product
        writes either layout at no extra cost)."""
        if source.dim() != 4 or source.shape[1] != self.feat_dim or min(source.shape[-2:]) < 1:
            raise ValueError(f'JBUStack: source must be (B, {self.feat_dim}, h, w) with h, w >= '
                             f'1, got {tuple(source.shape)}')
        input_size = tuple(int(n) for n in source.shape[-2:])  # ints under tracing too
        size = self.output_size(input_size, output_size, scale_factor)
        sizes = stage_sizes(input_size, size, self.num_stages)
        if not self.stages_fit(input_size, size):
            smallest = self.min_stage_size
            raise ValueError(
                f'JBUStack: upsampling {input_size} to {size} in {self.num_stages} stages goes '
                f'through {", ".join(map(str, sizes))}, but radius-{self.up1.radius} stages need '
                f'outputs of at least {smallest} x {smallest}; upsample to a larger size or use '
                'fewer stages')
        features = source
        for stage, stage_size in zip(self.stages, sizes):
            features = stage(features, average_pool(guidance, stage_size))
        return residual_conv1x1(features, *self.fixup_proj, scale=0.1,
                                memory_format=memory_format)
