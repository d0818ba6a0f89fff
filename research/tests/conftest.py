"""Fixtures of the research harnesses' tests."""

import pytest

from ann_seg.mmseg.synthetic import generate_long_range_dataset


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory):
    """8 training and 4 validation images of the built-in set, Cityscapes layout."""
    root = tmp_path_factory.mktemp("cityscapes")
    generate_long_range_dataset(
        str(root), layout="cityscapes", num_train=8, num_val=4, size=(64, 128), progress=False
    )
    return str(root)
