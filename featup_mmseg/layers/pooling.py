"""Adaptive average pooling that every ONNX exporter translates."""
from typing import Sequence

import torch
import torch.nn.functional as F


def average_pool(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(image, size)`` in a form that every ONNX exporter translates.

    torch.onnx's TorchScript exporter translates adaptive average pooling only to sizes that
    divide the input's, and only where it still knows the input's size: to those this is
    plain average pooling. To other sizes (a non-x2 JBU stack's stages, A2U's encoder
    kernels, AnyUp's and NAF's encodings) the same averages are taken by two products with
    constant pooling matrices: output row i averages the input rows [floor(i * H / h),
    ceil((i + 1) * H / h)), as adaptive pooling does; columns alike.
    """
    # Python ints (torch.jit.trace hands sizes read off tensors over as 0-d tensors)
    height, width, out_height, out_width = (int(n) for n in (*image.shape[-2:], *size))
    if height % out_height == 0 and width % out_width == 0:
        # plain average pooling: that exporter translates adaptive pooling only where its
        # shape inference still knows the input's size, which a dynamic batch can hide
        return F.avg_pool2d(image, (height // out_height, width // out_width))
    rows = _pooling_matrix(out_height, height, image)
    columns = _pooling_matrix(out_width, width, image)
    return rows @ image @ columns.t()


def _pooling_matrix(output_side: int, input_side: int, like: torch.Tensor) -> torch.Tensor:
    """(output_side, input_side): row i holds 1 / n over the n inputs that cell i averages."""
    cells = torch.arange(output_side, device=like.device)
    starts = cells * input_side // output_side
    ends = ((cells + 1) * input_side + output_side - 1) // output_side
    inputs = torch.arange(input_side, device=like.device)
    inside = (inputs >= starts[:, None]) & (inputs < ends[:, None])
    return inside.to(like.dtype) / (ends - starts)[:, None].to(like.dtype)
