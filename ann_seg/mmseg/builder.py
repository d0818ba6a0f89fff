"""The one segmentor builder: inference, benchmarks, conversion and the head comparison all
build their models here, so ``pretrained``, SyncBN, ``init_cfg`` and checkpoints are treated
alike everywhere.
"""

import contextlib
from typing import Optional, Sequence

import numpy as np
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, MODELS

from .checkpoint import CorruptCheckpointError, UnsafeCheckpointError
from .config import ConfigError, ConfigLike, import_custom_modules, load_config, replace_sync_bn
from .model_zoo import ModelZooError, describe_family, load_checkpoint


class ModelLoadError(RuntimeError):
    """The config or checkpoint cannot give a working model."""


def prepare_model_config(cfg: Config) -> Config:
    """What every single-process build needs: no pretrained download (``pretrained`` and the
    backbone's ``init_cfg`` cleared, as ``mmseg.apis.init_model`` does), SyncBN -> BN, the
    config's ``custom_imports`` imported, a ``test_pipeline`` for ``inference_model``."""
    import_custom_modules(cfg)
    cfg.model.pretrained = None
    if isinstance(cfg.model.get("backbone"), dict):
        cfg.model.backbone.init_cfg = None
    replace_sync_bn(cfg.model)
    if "test_pipeline" not in cfg and "test_dataloader" in cfg:
        cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline
    return cfg


def build_segmentor(
    config: ConfigLike,
    *,
    device: str = "cpu",
    cfg_options: Optional[dict] = None,
    checkpoint: Optional[str] = None,
    allow_missing: Sequence[str] = ("auxiliary_head.",),
) -> nn.Module:
    """The config's segmentor on ``device`` in eval mode, ``model.cfg`` set (as
    ``init_model``), PyTorch's default init (nothing downloaded). With ``checkpoint``: its
    weights, loaded strictly (``load_weights``) through the weights-only loader, and
    ``model.dataset_meta`` (``resolve_dataset_meta``). Raises ``ModelLoadError``."""
    try:
        cfg = prepare_model_config(load_config(config, cfg_options, work_dir=""))
        init_default_scope(cfg.get("default_scope", "mmseg"))
        model = MODELS.build(cfg.model)
    except ConfigError:  # names the file, key and value already
        raise
    except Exception as error:
        raise ModelLoadError(f"cannot build the model of {config}: {error}") from error
    model.cfg = cfg
    meta = None
    if checkpoint is not None:
        meta = load_weights(model, checkpoint, allow_missing=allow_missing, config=config)
    num_classes = getattr(getattr(model, "decode_head", None), "num_classes", None)
    if num_classes is not None:
        model.dataset_meta = resolve_dataset_meta(cfg, meta, num_classes)
    return model.to(device).eval()


def strip_module_prefix(state: dict) -> dict:
    """``module.x`` -> ``x``: a checkpoint saved from a DDP-wrapped model."""
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def load_weights(
    model: nn.Module,
    checkpoint: str,
    *,
    allow_missing: Sequence[str] = (),
    config: ConfigLike = "the config",
) -> dict:
    """Load ``checkpoint``'s state dict into ``model`` strictly: every key must match, except
    missing ones under ``allow_missing`` prefixes (an auxiliary head inference does not use).
    ``checkpoint``: a file (ann_seg's or mmseg's ANN/NonLocal layout, converted in memory), an
    mmseg model-zoo URL or a published model's name (``model_zoo``: downloaded once into
    torch's hub cache). Returns the checkpoint's ``meta``. Raises ``ModelLoadError``: a name,
    download or architecture that cannot be had, another class count, or the first keys and
    the counts of missing and unexpected ones; ``CorruptCheckpointError`` (also for NaN or Inf
    weights) or ``UnsafeCheckpointError``."""
    try:
        state, meta = load_checkpoint(checkpoint)
    except (CorruptCheckpointError, UnsafeCheckpointError):
        raise  # they name the file and the problem
    except ModelZooError as error:  # says all: no "cannot load" prefix
        raise ModelLoadError(str(error)) from None
    except Exception as error:
        raise ModelLoadError(f"cannot load checkpoint {checkpoint}: {error}") from error
    state = strip_module_prefix(state)
    own = model.state_dict()
    mismatched = [
        f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state and not k.startswith(tuple(allow_missing))]
    unexpected = [k for k in state if k not in own]
    name = config if isinstance(config, str) else (config.filename or "the config")
    classes = None if missing or unexpected else _class_count_mismatch(state, own)
    if classes:
        raise ModelLoadError(f"{checkpoint} has {classes[0]} classes, {name} has {classes[1]}")
    family = describe_family(state)
    if family and (missing or unexpected) and describe_family(own) != family:
        head = type(getattr(model, "decode_head", None)).__name__
        raise ModelLoadError(
            f"{checkpoint} is a{'n' if family == 'ANN' else ''} {family} model, {name} builds "
            f"a {head}: use an {family} config (ann-seg models lists the config of each)"
        )
    if missing or unexpected or mismatched:
        raise ModelLoadError(
            f"{checkpoint} does not match {name}: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:3]}"
        )
    model.load_state_dict(state, strict=False)  # every key checked above
    return meta


def _class_count_mismatch(state: dict, own: dict) -> Optional[tuple]:
    """``(checkpoint classes, model classes)`` when the classifiers differ in size."""
    key = "decode_head.conv_seg.weight"
    if key in state and key in own and state[key].shape[0] != own[key].shape[0]:
        return int(state[key].shape[0]), int(own[key].shape[0])
    return None


def _generated_palette(count: int, seed: int = 42) -> list:
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(count, 3)).tolist()


def resolve_dataset_meta(cfg: Config, checkpoint_meta: Optional[dict], num_classes: int) -> dict:
    """Class names and palette (``num_classes`` RGB triples): the checkpoint's
    ``meta.dataset_meta`` (or mmseg 0.x ``CLASSES``/``PALETTE``), else the config's test data
    set (its ``metainfo`` or the data set class's ``METAINFO``), else generated. Missing
    entries are filled in. ``source`` says where they came from."""
    meta, source = {}, "generated"
    checkpoint_meta = checkpoint_meta or {}
    if isinstance(checkpoint_meta.get("dataset_meta"), dict):
        meta, source = dict(checkpoint_meta["dataset_meta"]), "checkpoint"
    elif "CLASSES" in checkpoint_meta:
        meta = {"classes": checkpoint_meta["CLASSES"], "palette": checkpoint_meta.get("PALETTE")}
        source = "checkpoint"
    else:
        with contextlib.suppress(Exception):  # a config without a test set: generated names
            dataset = cfg.test_dataloader.dataset
            meta = dict(dataset.get("metainfo") or {})
            if "classes" not in meta:
                meta = dict(DATASETS.get(dataset.type).METAINFO, **meta)
            source = "config" if meta.get("classes") else source
    classes = [str(c) for c in (meta.get("classes") or ())][:num_classes]
    classes += [f"class_{i}" for i in range(len(classes), num_classes)]
    palette = [[int(v) for v in c] for c in (meta.get("palette") or ())][:num_classes]
    palette += _generated_palette(num_classes)[len(palette) :]
    return {"classes": classes, "palette": palette, "source": source}
