"""Adaptive average pooling that every ONNX exporter translates."""
from typing import Sequence

import torch
import torch.nn.functional as F


def average_pool(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(image, size)`` in a form that every ONNX exporter translates.

    torch.onnx's TorchScript exporter translates adaptive average pooling only to sizes that
    divide the input's. To other sizes (a non-x2 JBU stack's stages, A2U's encoder kernels)
    the same averages are
    taken by two products with constant pooling matrices: output row i averages the input
    rows [floor(i * H / h), ceil((i + 1) * H / h)), as adaptive pooling does; columns alike.
    """
    height, width = (int(n) for n in image.shape[-2:])
    if height % size[0] == 0 and width % size[1] == 0:
        return F.adaptive_avg_pool2d(image, size)
    rows = _pooling_matrix(int(size[0]), height, image)
    columns = _pooling_matrix(int(size[1]), width, image)
    return rows @ image @ columns.t()


def _pooling_matrix(output_side: int, input_side: int, like: torch.Tensor) -> torch.Tensor:
    """(output_side, input_side): row i holds 1 / n over the n inputs that cell i averages."""
    cells = torch.arange(output_side, device=like.device)
    starts = cells * input_side // output_side
    ends = ((cells + 1) * input_side + output_side - 1) // output_side
    inputs = torch.arange(input_side, device=like.device)
    inside = (inputs >= starts[:, None]) & (inputs < ends[:, None])
    return inside.to(like.dtype) / (ends - starts)[:, None].to(like.dtype)
