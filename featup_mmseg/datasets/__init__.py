from .coco_stuff27 import COCOStuff27Dataset
from .image_folder import UnlabelledImageFolder
from .synthetic_shapes import SyntheticShapesDataset, generate_synthetic_shapes
from .transforms import ResetOriginalShape

__all__ = [
    'COCOStuff27Dataset', 'ResetOriginalShape', 'UnlabelledImageFolder', 'SyntheticShapesDataset',
    'generate_synthetic_shapes'
]
