"""LayerNorm over the channels of an NCHW map (FeatUp's ChannelNorm)."""
import torch
import torch.nn as nn


class ChannelNorm(nn.Module):
    """LayerNorm over C of (B, C, H, W) features; FeatUp applies it to the backbone output
    before upsampling (``use_norm=True``). Its parameters are ``norm.weight``/``norm.bias``,
    as in FeatUp's checkpoints (``model.1.norm.*``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
