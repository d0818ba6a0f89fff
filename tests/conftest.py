"""Shared fixtures: generated data sets in the real on-disk layouts, one-thread torch.

Plain helpers and constants are in ``_helpers.py``. The mmseg wheel installs a top-level package
named ``tests``; nothing here imports ``tests``.
"""

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: N workers share the cores; one torch thread each (and in the tools they
    # start) instead of N x one per core, which on 2 cores runs many times slower
    os.environ["OMP_NUM_THREADS"] = "1"

# these import torch: after the threads
from _helpers import IMAGE_SIZE, one_thread  # noqa: E402

from ann_seg.mmseg.synthetic import generate_long_range_dataset  # noqa: E402


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    generate_long_range_dataset(
        str(root), layout="cityscapes", num_train=8, num_val=4, size=IMAGE_SIZE, progress=False
    )
    return str(root)


@pytest.fixture(scope="session")
def ade20k_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade20k")
    generate_long_range_dataset(
        str(root), layout="ade20k", num_train=8, num_val=4, size=IMAGE_SIZE, progress=False
    )
    return str(root)


@pytest.fixture
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def single_thread_module():
    """``one_thread`` for a whole test module, its module fixtures included:
    ``pytestmark = pytest.mark.usefixtures('single_thread_module')``."""
    with one_thread():
        yield
