"""A folder of images without labels, for FeatUp's self-supervised pretraining."""
from pathlib import Path
from typing import List, Sequence, Union

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


@DATASETS.register_module()
class UnlabelledImageFolder(BaseSegDataset):
    """Every image under ``data_root/img_dir`` (subfolders too with ``recursive``), sorted
    by path, with no label maps: what :class:`FeatUpPretrainHook` and
    ``tools/pretrain_upsampler.py`` draw their images from. Suffixes match in any case.

    A pipeline for it loads and sizes the images and packs them, without
    LoadAnnotations, e.g. ``[dict(type='LoadImageFromFile'), dict(type='RandomResize',
    ...), dict(type='RandomCrop', crop_size=...), dict(type='PackSegInputs')]``.

    Args:
        img_dir: the folder under ``data_root`` (default: ``data_root`` itself).
        img_suffix: file endings taken as images.
        recursive: also take the images in subfolders.
        **kwargs: BaseSegDataset's (``data_root``, ``pipeline``, ``indices``, ...).

    Raises:
        FileNotFoundError: when the dataset is built (unless ``lazy_init``), if the folder
            does not exist or holds no image.
    """
    METAINFO = dict(classes=('unlabelled', ), palette=[[0, 0, 0]])

    def __init__(self, img_dir: str = '', img_suffix: Union[str, Sequence[str]] = IMAGE_SUFFIXES,
                 recursive: bool = True, **kwargs):
        suffixes = (img_suffix, ) if isinstance(img_suffix, str) else tuple(img_suffix)
        if not suffixes or not all(isinstance(s, str) and s for s in suffixes):
            raise ValueError('UnlabelledImageFolder: img_suffix must be a file ending or a '
                             f"sequence of them, e.g. ('.jpg', '.png'), got {img_suffix!r}")
        if not isinstance(recursive, bool):
            raise ValueError(f'UnlabelledImageFolder: recursive must be a bool, got '
                             f'{recursive!r}')
        self.suffixes = tuple(s.lower() for s in suffixes)
        self.recursive = recursive
        super().__init__(data_prefix=dict(img_path=img_dir), **kwargs)

    def load_data_list(self) -> List[dict]:
        folder = Path(self.data_prefix['img_path'])
        if not folder.is_dir():
            raise FileNotFoundError(f'UnlabelledImageFolder: no folder {folder} (data_root '
                                    f'{self.data_root!r}, img_dir joined to it)')
        files = folder.rglob('*') if self.recursive else folder.iterdir()
        images = sorted(str(path) for path in files
                        if path.is_file() and path.suffix.lower() in self.suffixes)
        if not images:
            where = 'or its subfolders ' if self.recursive else ''
            raise FileNotFoundError(f'UnlabelledImageFolder: no image in {folder} {where}'
                                    f'(file endings {", ".join(self.suffixes)})')
        return [
            dict(img_path=path, label_map=self.label_map, reduce_zero_label=False,
                 seg_fields=[]) for path in images
        ]
