"""Train and test through mmengine's Runner, as mmseg's tools do, plus CPU-distributed support.

mmseg's ``tools/train.py``/``test.py`` behave the same with our configs (they carry
``custom_imports``); these functions add what they lack: ``mmseg::`` config names, and
torchrun on CPU-only machines (gloo), where mmengine's own launcher calls
``torch.cuda.set_device`` and fails.
"""

import contextlib
import io
import logging
import os
import os.path as osp
import sys
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

from ann_seg.layers.compat import native_low_precision_dtype

from . import amp as _amp  # noqa: F401  (registers CPUAutocastOptimWrapper)
from .builder import load_weights
from .config import ConfigError, ConfigLike, load_config, replace_sync_bn
from .data_check import DataCheckError, check_dataset, format_report
from .fast import enable_fast_training_cfg


def end_process_group() -> None:
    """Destroy the process group a distributed run used: left to the interpreter's exit, gloo's
    threads can abort a rank ("terminate called without an active exception", exit -6)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def setup_launcher(cfg: Config, launcher: str = "none") -> Config:
    """Set ``cfg.launcher``; for ``pytorch`` without CUDA, start the gloo process group from
    torchrun's environment and configure DDP and BN for the CPU."""
    cfg.launcher = launcher
    if launcher == "pytorch" and not torch.cuda.is_available():
        if not dist.is_initialized():
            for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
                if key not in os.environ:
                    raise RuntimeError(
                        f"--launcher pytorch needs torchrun's environment "
                        f"({key} is not set); start with tools/dist_train.sh"
                    )
            dist.init_process_group(backend="gloo")
        cfg.env_cfg = dict(cfg.get("env_cfg", {}), dist_cfg=dict(backend="gloo"))
        # device_ids=None: mmengine would pass [LOCAL_RANK], which DDP refuses for CPU modules
        cfg.model_wrapper_cfg = dict(
            type="MMDistributedDataParallel",
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get("find_unused_parameters", False),
        )
        replace_sync_bn(cfg._cfg_dict)
    return cfg


def enable_amp(cfg: Config) -> Config:
    """``--amp``: float16 autocast with dynamic loss scaling on CUDA (mmengine's
    ``AmpOptimWrapper``); on a CPU with native bfloat16 (AVX512-BF16 or AMX), bfloat16
    autocast with a plain optimizer step (``CPUAutocastOptimWrapper``: mmengine's AMP wrapper
    refuses CPUs); on other CPUs bfloat16 would be emulated, several times slower than
    float32, so training stays in float32 and the log says so."""
    wrapper = cfg.optim_wrapper.type
    if wrapper in ("AmpOptimWrapper", "CPUAutocastOptimWrapper"):
        print_log(f"--amp: the config already uses {wrapper}", logger="current")
        return cfg
    if wrapper != "OptimWrapper":
        raise ConfigError(f'--amp needs optim_wrapper.type "OptimWrapper", got {wrapper!r}')
    if torch.cuda.is_available():
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
        print_log("--amp: float16 autocast with dynamic loss scaling (CUDA)", logger="current")
    elif native_low_precision_dtype("cpu") is not None:
        cfg.optim_wrapper.type = "CPUAutocastOptimWrapper"
        cfg.optim_wrapper.dtype = "bfloat16"
        print_log("--amp: bfloat16 autocast on the CPU (native bf16 here)", logger="current")
    else:
        print_log(
            "--amp: this CPU has no native bfloat16 (no AVX512-BF16 or AMX); autocast would be "
            "emulated and several times slower than float32, so training runs in float32",
            logger="current",
            level=logging.WARNING,
        )
    return cfg


def build_runner(cfg: Config, verbose: bool = True) -> Runner:
    """mmengine's Runner (or the config's ``runner_type``). ``verbose=False``: the config dump
    and environment report that the Runner logs while it is built go to its log file only."""
    if verbose:
        return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    hidden = io.StringIO()
    with contextlib.redirect_stdout(hidden):
        runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    for handler in runner.logger.handlers:  # the console handler was made during the build
        if isinstance(handler, logging.StreamHandler) and handler.stream is hidden:
            handler.setStream(sys.stdout)
    print_log(
        f"config and environment: {runner.log_dir} (--verbose prints them here)",
        logger="current",
    )
    return runner


def train(
    config: ConfigLike,
    work_dir: Optional[str] = None,
    resume: bool = False,
    amp: bool = False,
    cfg_options: Optional[dict] = None,
    launcher: str = "none",
    verbose: bool = True,
    check_data: bool = False,
    fast: str = "off",
):
    """Train as ``mmseg``'s ``tools/train.py``; returns the trained model. ``check_data``:
    first scan the train and val sets (``check_dataset``), print the report, and raise
    ``DataCheckError`` without training if it found problems. ``fast``: ``'off'``, ``'on'``
    (the fast training mode: ``ann_seg.mmseg.fast``) or ``'checkpoint'`` (fast mode with exact
    activation checkpointing); added as the config's ``FastTrainingHook``."""
    cfg = load_config(config, cfg_options, work_dir)
    if check_data:
        splits = [s for s in ("train", "val") if cfg.get(f"{s}_dataloader")]
        report = check_dataset(cfg, splits)
        print(format_report(report), flush=True)
        if report["problems"]:
            raise DataCheckError(
                f"--check-data: {len(report['problems'])} problem(s) in the data set "
                "(table above); training not started"
            )
    setup_launcher(cfg, launcher)
    if amp:
        enable_amp(cfg)
    enable_fast_training_cfg(cfg, fast)
    cfg.resume = resume
    runner = build_runner(cfg, verbose)
    model = runner.train()
    end_process_group()
    return model


def _trigger_visualization(cfg: Config, show_dir: str, interval: int) -> str:
    """Draw every ``interval``-th test image into ``show_dir`` (relative: under the work
    dir); returns the folder."""
    hooks = cfg.default_hooks
    if "visualization" not in hooks:
        raise ConfigError(
            "--show-dir needs a visualization hook in default_hooks, e.g. "
            'visualization=dict(type="SegVisualizationHook")'
        )
    if interval < 1:
        raise ConfigError(f"--show-interval must be >= 1, got {interval}")
    hooks["visualization"]["draw"] = True
    hooks["visualization"]["interval"] = interval
    if not osp.isabs(show_dir):
        show_dir = osp.join(cfg.work_dir, show_dir)
    cfg.visualizer["save_dir"] = show_dir
    return show_dir


def _apply_tta(cfg: Config, config: ConfigLike) -> None:
    if "tta_model" not in cfg or "tta_pipeline" not in cfg:
        name = config if isinstance(config, str) else cfg.filename
        raise ConfigError(
            f"--tta: {name} defines no tta_model/tta_pipeline (mmseg's dataset and runtime "
            "bases define them for the real-data configs; the built-in data set's configs "
            "have none)"
        )
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def test(
    config: ConfigLike,
    checkpoint: str,
    work_dir: Optional[str] = None,
    out: Optional[str] = None,
    show_dir: Optional[str] = None,
    tta: bool = False,
    cfg_options: Optional[dict] = None,
    launcher: str = "none",
    strict: bool = True,
    show_interval: int = 1,
    verbose: bool = True,
) -> dict:
    """Evaluate ``checkpoint`` as ``mmseg``'s ``tools/test.py``; returns the metrics dict.

    ``strict`` (default): the checkpoint must hold every weight of the config's model and
    nothing else (``ModelLoadError`` names the missing and unexpected keys); mmseg's own
    test.py loads non-strictly and scores a wrong checkpoint. ``show_dir``: painted
    predictions of every ``show_interval``-th image, under the work dir when relative."""
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    cfg = load_config(config, cfg_options, work_dir)
    setup_launcher(cfg, launcher)
    if show_dir:
        show_dir = _trigger_visualization(cfg, show_dir, show_interval)
    if tta:
        _apply_tta(cfg, config)
    if out is not None:
        cfg.test_evaluator["output_dir"] = out
        cfg.test_evaluator["keep_results"] = True
    if not strict:
        cfg.load_from = checkpoint
    runner = build_runner(cfg, verbose)
    if strict:
        model = getattr(runner.model, "module", runner.model)  # DDP / TTA wrappers
        load_weights(model, checkpoint, config=config)
    metrics = runner.test()
    end_process_group()
    if show_dir:
        print_log(f"painted predictions: {show_dir}", logger="current")
    return metrics
