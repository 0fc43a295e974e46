"""A small synthetic segmentation dataset in ADE20K's layout, made on the spot.

Images show coloured discs, boxes, triangles and thin bars over a noisy, unevenly lit
background; each class has its own hue, so every class boundary is a visible image edge,
and the thin bars are about as wide as one cell of the 1/4-resolution grid a SegFormer
head predicts on: detail that guided upsampling can recover and bilinear blurs. Layout as ADE20K:
``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``
with label 0 unused (reduce_zero_label=True) and class c stored as c + 1.
"""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

CLASSES = ('background', 'disc', 'box', 'triangle', 'bar')
PALETTE = [[70, 70, 70], [220, 60, 60], [60, 170, 60], [60, 90, 220], [235, 200, 40]]
# Mean colour (BGR, as written by OpenCV) of each class; instances vary around it.
_CLASS_BGR = np.array([[90, 110, 100], [50, 60, 200], [60, 180, 60], [210, 100, 50],
                       [40, 210, 230]], dtype=np.float32)
_SPLITS = {'training': 'train', 'validation': 'val'}
# How often each shape class is drawn: small shapes more often, for balanced pixel counts.
_SHAPE_FREQUENCIES = [0.1, 0.2, 0.3, 0.4]


@DATASETS.register_module()
class SyntheticShapesDataset(BaseSegDataset):
    """The synthetic shapes dataset (see :func:`generate_synthetic_shapes`)."""
    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self, img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True,
                 **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)


def _draw_sample(rng: np.random.Generator, size: int):
    """One (BGR image, label map) pair; labels are class index + 1."""
    label = np.ones((size, size), np.uint8)  # background
    for _ in range(rng.integers(6, 11)):
        cls = 1 + int(rng.choice(len(CLASSES) - 1, p=_SHAPE_FREQUENCIES))
        mask = np.zeros((size, size), np.uint8)
        centre = rng.integers(0, size, 2)
        extent = int(rng.integers(size // 10, size // 5))
        if CLASSES[cls] == 'disc':
            cv2.circle(mask, tuple(int(v) for v in centre), extent, 1, -1)
        elif CLASSES[cls] == 'box':
            corner = centre + rng.integers(extent, 2 * extent + 1, 2)
            cv2.rectangle(mask, tuple(int(v) for v in centre), tuple(int(v) for v in corner),
                          1, -1)
        elif CLASSES[cls] == 'triangle':
            points = centre + rng.integers(-2 * extent, 2 * extent + 1, (3, 2))
            cv2.fillPoly(mask, [points.astype(np.int32)], 1)
        else:  # thin bars: 2-4 px wide, about one cell of the decoder's 1/4 grid
            end = centre + rng.integers(-3 * extent, 3 * extent + 1, 2)
            cv2.line(mask, tuple(int(v) for v in centre), tuple(int(v) for v in end), 1,
                     int(rng.integers(2, 5)))
        label[mask > 0] = cls + 1
    colours = _CLASS_BGR + rng.normal(0, 12, _CLASS_BGR.shape)
    image = colours[label - 1]
    # gentle illumination gradient and sensor noise: edges stay visible but not trivial
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    direction = rng.normal(0, 1, 2)
    image += 15 * (direction[0] * ramp[:, None, None] + direction[1] * ramp[None, :, None])
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def generate_synthetic_shapes(root, num_train: int = 200, num_val: int = 40, size: int = 128,
                              seed: int = 0) -> Path:
    """Writes the dataset under ``root`` (kept if it was made with the same arguments).

    Returns:
        The dataset root.
    """
    root = Path(root)
    settings = dict(num_train=num_train, num_val=num_val, size=size, seed=seed, version=2)
    manifest = root / 'synthetic_shapes.json'
    if manifest.exists() and json.loads(manifest.read_text()) == settings:
        return root
    for stale in ('images', 'annotations'):
        shutil.rmtree(root / stale, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for split, count in (('training', num_train), ('validation', num_val)):
        image_dir = root / 'images' / split
        label_dir = root / 'annotations' / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, label = _draw_sample(rng, size)
            name = f'{_SPLITS[split]}_{index:05d}'
            cv2.imwrite(str(image_dir / f'{name}.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(label_dir / f'{name}.png'), label)
    manifest.write_text(json.dumps(settings))
    return root
