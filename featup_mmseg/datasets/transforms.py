"""Data transforms of featup_mmseg's protocols."""
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS


@TRANSFORMS.register_module()
class ResetOriginalShape(BaseTransform):
    """Makes the image's current size its original size (``ori_shape``).

    mmseg resizes a prediction to ``ori_shape`` and scores it against the label as the
    pipeline left it; after a crop (e.g. ``ResizeShortestEdge`` then ``CenterCrop`` on
    image and label, the evaluation of FeatUp's and JAFAR's linear probes) the two differ
    unless the crop becomes the original.
    """

    def transform(self, results: dict) -> dict:
        results['ori_shape'] = results['img'].shape[:2]
        return results
