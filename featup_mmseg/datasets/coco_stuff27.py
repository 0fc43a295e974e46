"""COCO-Stuff's 27 coarse classes (the STEGO / FeatUp linear-probe benchmark) from either
label layout of COCO-Stuff 164k, as an mmseg dataset."""
from typing import Dict, Optional, Sequence

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from ..layers.argument_checks import check_choice

# COCO-Stuff's coarse categories: 12 thing supercategories, then 15 stuff ones, in the
# order of the COCO-Stuff-27 benchmark (IIC, STEGO, FeatUp, JAFAR).
COARSE_CLASSES = (
    'electronic-things', 'appliance-things', 'food-things', 'furniture-things',
    'indoor-things', 'kitchen-things', 'accessory-things', 'animal-things', 'outdoor-things',
    'person-things', 'sports-things', 'vehicle-things', 'ceiling-stuff', 'floor-stuff',
    'food-stuff', 'furniture-stuff', 'rawmaterial-stuff', 'textile-stuff', 'wall-stuff',
    'window-stuff', 'building-stuff', 'ground-stuff', 'plant-stuff', 'sky-stuff',
    'solid-stuff', 'structural-stuff', 'water-stuff')

# The fine ids (0..181: 0..90 things, 91..181 stuff, as in COCO-Stuff's stuffthingmaps)
# that make up each coarse class, indexed like COARSE_CLASSES. Ids 11, 25, 28, 29, 44,
# 65, 67, 68, 70, 82 and 90 are COCO thing ids without annotations; they keep their
# supercategory.
_FINE_IDS_OF_COARSE = (
    range(71, 77), range(77, 83), range(51, 61), range(61, 71), range(83, 91),
    range(43, 51), range(25, 33), range(15, 25), range(9, 15), (0, ), range(33, 43),
    range(1, 9),
    (101, 102),
    (100, 113, 114, 115, 116, 117),
    (120, 121, 152, 169),
    (97, 106, 107, 109, 111, 122, 129, 132, 155, 160, 164),
    (99, 131, 138, 142),
    (91, 92, 103, 104, 108, 130, 136, 140, 151, 166, 167),
    range(170, 177),
    (179, 180),
    (94, 95, 127, 150, 157, 165),
    (110, 124, 125, 135, 139, 143, 144, 146, 148, 153, 158),
    (93, 96, 118, 123, 128, 133, 141, 162, 168),
    (105, 156),
    (126, 134, 149, 159, 161, 181),
    (98, 112, 137, 145, 163),
    (119, 147, 154, 177, 178),
)
FINE_TO_COARSE: Dict[int, int] = {
    fine: coarse for coarse, fines in enumerate(_FINE_IDS_OF_COARSE) for fine in fines}

# mmseg's tools/dataset_converters/coco_stuff164k.py numbers the 171 annotated fine ids
# consecutively (its '*_labelTrainIds.png'), skipping the unannotated thing ids.
UNANNOTATED_FINE_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
MMSEG_TRAIN_ID_TO_FINE = tuple(fine for fine in range(182) if fine not in UNANNOTATED_FINE_IDS)

LABEL_LAYOUTS = ('mmseg', 'stuffthingmaps')


def coarse_label_map(label_layout: str) -> Dict[int, int]:
    """The label values of a layout mapped to the 27 coarse classes (255, unlabelled, is
    left out and so stays 255).

    Args:
        label_layout: 'mmseg' (values 0..170, mmseg's converted ``*_labelTrainIds.png``)
            or 'stuffthingmaps' (values 0..181, COCO-Stuff's own fine ids).

    Returns:
        dict: label value -> coarse class index (0..26).
    """
    check_choice('COCOStuff27Dataset', 'label_layout', label_layout, LABEL_LAYOUTS)
    if label_layout == 'stuffthingmaps':
        return dict(FINE_TO_COARSE)
    return {train_id: FINE_TO_COARSE[fine] for train_id, fine in enumerate(MMSEG_TRAIN_ID_TO_FINE)}


@DATASETS.register_module()
class COCOStuff27Dataset(BaseSegDataset):
    """COCO-Stuff 164k with its 182 fine classes merged into the 27 coarse classes that
    linear probes of feature upsamplers are scored on (FeatUp's Table 1, JAFAR).

    The merge is BaseSegDataset's ``label_map``, which ``LoadAnnotations`` applies; the
    unlabelled value 255 stays 255 (mmseg's ignore index). The default paths and
    suffixes are those of mmseg's COCO-Stuff 164k layout (``data/coco_stuff164k`` with
    ``images/train2017`` and ``annotations/train2017``, as mmseg's
    ``_base_/datasets/coco-stuff164k.py``).

    Args:
        label_layout: which label files ``seg_map_suffix`` points at: 'mmseg' (default;
            mmseg's converted ``*_labelTrainIds.png``, values 0..170) or 'stuffthingmaps'
            (COCO-Stuff's ``stuffthingmaps_trainval2017`` pngs, values 0..181; set
            ``seg_map_suffix='.png'``).
        img_suffix: image file ending.
        seg_map_suffix: label file ending.
        **kwargs: BaseSegDataset's (``data_root``, ``data_prefix``, ``pipeline``, ...).

    Raises:
        ValueError: for another ``label_layout``, or a ``metainfo`` that renames or drops
            classes (the merge is fixed).
    """
    METAINFO = dict(classes=COARSE_CLASSES)

    def __init__(self,
                 label_layout: str = 'mmseg',
                 img_suffix: str = '.jpg',
                 seg_map_suffix: str = '_labelTrainIds.png',
                 **kwargs):
        self.label_layout = check_choice('COCOStuff27Dataset', 'label_layout', label_layout,
                                         LABEL_LAYOUTS)
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

    def get_label_map(self, new_classes: Optional[Sequence] = None) -> Dict[int, int]:
        """The fine-to-coarse map of this dataset's label layout (BaseSegDataset calls
        this with the configured classes)."""
        if new_classes is not None and tuple(new_classes) != COARSE_CLASSES:
            raise ValueError(
                'COCOStuff27Dataset: metainfo classes must be the 27 coarse classes in their '
                f'order {COARSE_CLASSES}, got {tuple(new_classes)}')
        return coarse_label_map(self.label_layout)
