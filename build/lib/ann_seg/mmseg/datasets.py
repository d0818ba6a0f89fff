"""mmseg dataset class for the built-in long-range synthetic data set."""

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .synthetic import synthetic_metainfo

_DEFAULT_META = synthetic_metainfo(4)


@DATASETS.register_module()
class LongRangeSyntheticDataset(BaseSegDataset):
    """The synthetic set written by ``generate_long_range_dataset`` in the Cityscapes layout
    (``leftImg8bit``/``gtFine``, train ids ``0..K``). For ``K != 4`` object classes pass
    ``metainfo=synthetic_metainfo(K)``. The ADE20K layout is read by mmseg's ``ADE20KDataset``
    or by this class with ``img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True``.
    """

    METAINFO = dict(classes=_DEFAULT_META["classes"], palette=_DEFAULT_META["palette"])

    def __init__(
        self,
        img_suffix: str = "_leftImg8bit.png",
        seg_map_suffix: str = "_gtFine_labelTrainIds.png",
        **kwargs,
    ):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)
