from .synthetic_shapes import SyntheticShapesDataset, generate_synthetic_shapes

__all__ = ['SyntheticShapesDataset', 'generate_synthetic_shapes']
