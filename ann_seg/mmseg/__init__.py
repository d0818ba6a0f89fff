"""The mmseg adapter: the only code that builds on mmseg's and mmengine's model APIs.

Heads (``ANNSegHead``, ``APNBSegHead``, ``NLSegHead``, ``CGNLSegHead``) and the data set
(``LongRangeSyntheticDataset``) register in mmseg's registries on import; ``builder`` holds the
one segmentor builder, ``checkpoint`` the weights-only checkpoint safety, ``config`` the
packaged configs, ``runner`` train/test through mmengine's Runner, ``synthetic`` the built-in
data set's generator. Registered for the configs as well: ``hooks`` (``AtomicCheckpointHook``,
``SkippedSamplesHook``), ``transforms`` (``LoadImageOrSkip``, ``LoadAnnotationsOrSkip``),
``losses`` (``WeightedCrossEntropyLoss``), ``fast`` (``FastTrainingHook``: the fast training
mode, ``enable_fast_training``); ``data_check`` scans a config's data sets.
"""

from . import (  # noqa: F401  (registries)
    amp,
    datasets,
    evaluation,
    fast,
    heads,
    hooks,
    losses,
    submission,
    transforms,
)
from .builder import ModelLoadError, build_segmentor, load_weights, resolve_dataset_meta
from .checkpoint import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    install_checkpoint_safety,
    safe_load_checkpoint,
    uninstall_checkpoint_safety,
)
from .config import load_config, packaged_config
from .data_check import DataCheckError, check_dataset, format_report
from .fast import FastTrainingHook, enable_fast_training
from .hooks import (
    AtomicCheckpointHook,
    SkippedSamplesHook,
    checkpoint_loads,
    select_resume_checkpoint,
)
from .losses import WeightedCrossEntropyLoss
from .transforms import LoadAnnotationsOrSkip, LoadImageOrSkip

__all__ = [
    "AtomicCheckpointHook",
    "CorruptCheckpointError",
    "DataCheckError",
    "FastTrainingHook",
    "LoadAnnotationsOrSkip",
    "LoadImageOrSkip",
    "ModelLoadError",
    "SkippedSamplesHook",
    "UnsafeCheckpointError",
    "WeightedCrossEntropyLoss",
    "build_segmentor",
    "check_dataset",
    "enable_fast_training",
    "checkpoint_loads",
    "format_report",
    "install_checkpoint_safety",
    "load_config",
    "load_weights",
    "packaged_config",
    "resolve_dataset_meta",
    "safe_load_checkpoint",
    "select_resume_checkpoint",
    "uninstall_checkpoint_safety",
]
