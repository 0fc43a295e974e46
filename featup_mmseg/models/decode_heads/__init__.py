from .featup_segformer_head import FeatUpSegformerHead

__all__ = ['FeatUpSegformerHead']
