"""Feature figures for the tools (FeatUp paper, Figure 5 style): an image next to feature
maps, all coloured by one PCA."""
from typing import Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .layers.implicit_field import principal_components

TITLE_HEIGHT = 28


def feature_figure(image: np.ndarray, panels: Sequence[Tuple[str, torch.Tensor]],
                   reference: torch.Tensor) -> np.ndarray:
    """(TITLE_HEIGHT + H, (1 + n) * W, 3) BGR figure under a row of titles: the (H, W, 3)
    BGR ``image``, then n (title, (1, C, h, w) features) panels resized to (H, W)
    (nearest). Features map to RGB through the top 3 principal components of ``reference``
    (1, C, h, w) (e.g. the low-res features), each scaled from its 1% to its 99% quantile
    there, so that all panels share their colours."""
    height, width = image.shape[:2]
    reference = reference.detach().float().cpu()
    mean, basis = principal_components(reference, 3)

    def project(features: torch.Tensor) -> torch.Tensor:
        return torch.einsum('bchw,ck->bkhw', features - mean[:, None, None], basis)[0]

    components = project(reference).flatten(1)
    low, high = components.quantile(0.01, dim=1), components.quantile(0.99, dim=1)
    scale = (high - low).clamp(min=1e-12)
    columns = [image]
    for _, features in panels:
        features = F.interpolate(features.detach().float().cpu(), (height, width),
                                 mode='nearest')
        rgb = ((project(features) - low[:, None, None]) / scale[:, None, None]).clamp(0, 1)
        rgb = (rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        columns.append(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    header = np.full((TITLE_HEIGHT, width * len(columns), 3), 255, np.uint8)
    for index, title in enumerate(['image'] + [title for title, _ in panels]):
        cv2.putText(header, title, (index * width + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    (0, 0, 0), 1)
    return np.concatenate([header, np.concatenate(columns, axis=1)], 0)
