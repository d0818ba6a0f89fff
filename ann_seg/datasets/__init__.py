"""Data sets of ann_seg."""

from .synthetic import (
    CUE_BAND_FRACTION,
    LAYOUTS,
    MANIFEST_NAME,
    MIN_CUE_DISTANCE_FRACTION,
    SPLITS,
    SYNTHETIC_CLASSES,
    SYNTHETIC_PALETTE,
    LongRangeGeometry,
    SyntheticSample,
    generate_long_range_dataset,
    long_range_geometry,
    render_long_range_sample,
    synthetic_metainfo,
)

__all__ = [
    "CUE_BAND_FRACTION",
    "LAYOUTS",
    "MANIFEST_NAME",
    "MIN_CUE_DISTANCE_FRACTION",
    "SPLITS",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_PALETTE",
    "LongRangeGeometry",
    "SyntheticSample",
    "generate_long_range_dataset",
    "long_range_geometry",
    "render_long_range_sample",
    "synthetic_metainfo",
]
