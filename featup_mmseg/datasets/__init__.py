from .coco_stuff27 import COCOStuff27Dataset
from .image_folder import UnlabelledImageFolder
from .synthetic_shapes import SyntheticShapesDataset, generate_synthetic_shapes

__all__ = [
    'COCOStuff27Dataset', 'UnlabelledImageFolder', 'SyntheticShapesDataset',
    'generate_synthetic_shapes'
]
