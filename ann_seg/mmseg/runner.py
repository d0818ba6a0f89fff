"""Train and test through mmengine's Runner, as mmseg's tools do, plus CPU-distributed support.

mmseg's ``tools/train.py``/``test.py`` behave the same with our configs (they carry
``custom_imports``); these functions add what they lack: ``mmseg::`` config names, and
torchrun on CPU-only machines (gloo), where mmengine's own launcher calls
``torch.cuda.set_device`` and fails.
"""

import contextlib
import gc
import io
import logging
import os
import os.path as osp
import sys
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

from ann_seg.io.interrupts import termination_as_interrupt

from .builder import load_weights
from .config import ConfigError, ConfigLike, load_config, replace_sync_bn
from .data_check import (
    DataCheckError,
    check_dataset,
    describe_training_files,
    format_report,
    scan_training_files,
)
from .evaluation import configure_test_evaluator
from .model_zoo import ModelZooError, resolve_source
from .speed import (
    SpeedPolicy,
    announce,
    apply_inference_speed,
    apply_training_speed,
    default_device,
)
from .submission import plan_submission, zip_submission


def end_process_group() -> None:
    """Destroy the process group a distributed run used: left to the interpreter's exit, gloo's
    threads can abort a rank ("terminate called without an active exception", exit -6)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def release_runner(runner: Runner) -> None:
    """Drop ``runner``'s model (a DDP wrapper: its reducer holds gloo work) and collect cycles
    now, then ``end_process_group``: freed at the interpreter's exit instead, they can abort a
    rank ("terminate called without an active exception")."""
    runner.model = None
    gc.collect()
    end_process_group()


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
                        f"({key} is not set); start with ann-seg dist-train"
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


def log_training_files(cfg: Config, logger: logging.Logger) -> None:
    """Log, before training starts, the training files that are missing, dangling or not
    readable, and those the data set left out (``scan_training_files``): a training set
    smaller than its files is stated, not found out later. A data set this scan cannot build
    is left to the Runner, which reports why."""
    try:
        scan = scan_training_files(cfg)
    except Exception as error:  # noqa: BLE001 - the Runner builds it next and says why
        logger.debug(f"training files not scanned: {type(error).__name__}: {error}")
        return
    for line in describe_training_files(scan):
        logger.warning(line)


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
    speed: Optional[SpeedPolicy] = None,
    cfg_options: Optional[dict] = None,
    launcher: str = "none",
    verbose: bool = True,
    check_data: bool = False,
):
    """Train as ``mmseg``'s ``tools/train.py``; returns the trained model. ``check_data``:
    first scan the train and val sets (``check_dataset``), print the report, and raise
    ``DataCheckError`` without training if it found problems. Without it, training files that
    are missing, dangling or unreadable, or that the data set left out, are logged right after
    the Runner is built (``log_training_files``). SIGTERM stops the Runner as SIGINT does
    (``interrupts.Terminated``), never in the middle of a checkpoint save. ``speed``: the speed
    policy (``ann_seg.mmseg.speed``), written into the config (optimizer wrapper,
    ``FastTrainingHook``) so that the config dumped into the work dir trains the same under
    mmseg's own tools."""
    cfg = load_config(config, cfg_options, work_dir)
    with termination_as_interrupt():
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
        resolved = (speed or SpeedPolicy()).resolve(default_device())
        apply_training_speed(cfg, resolved)
        cfg.resume = resume
        runner = build_runner(cfg, verbose)
        if is_main_process():
            log_training_files(cfg, runner.logger)
        announce(resolved)
        trained = runner.train()
    model = getattr(trained, "module", trained)  # not DDP's wrapper
    del trained
    release_runner(runner)
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
    speed: Optional[SpeedPolicy] = None,
    metric: str = "iou",
    tables: bool = True,
    format_only: Optional[str] = None,
) -> dict:
    """Evaluate ``checkpoint`` as ``mmseg``'s ``tools/test.py``; returns the metrics dict.
    ``tables``: also the per-class IoU/accuracy table and the confusion matrix, beside the
    metrics in the run's log folder; ``metric='cityscapes'``: also cityscapesScripts' official
    evaluation of the same predictions (``evaluation``). ``format_only``: no evaluation, the
    test-server PNGs into that folder and its zip (``submission``; resumes: images whose PNG
    exists are skipped); returns ``{"format_only", "zip", "written", "kept"}``.

    ``checkpoint``: a file, an mmseg model-zoo URL or a published model's name (``model_zoo``).
    ``strict`` (default): the checkpoint must hold every weight of the config's model and
    nothing else (``ModelLoadError`` names the missing and unexpected keys); mmseg's own
    test.py loads non-strictly and scores a wrong checkpoint. ``show_dir``: painted
    predictions of every ``show_interval``-th image, under the work dir when relative.
    ``speed``: the inference speed policy, applied to the loaded model
    (``apply_inference_speed``)."""
    if not osp.isfile(checkpoint):  # a published model's name or a URL (model_zoo)
        if not strict:
            raise ConfigError("--non-strict takes a checkpoint file; names and URLs load strictly")
        try:
            resolve_source(checkpoint)
        except ModelZooError as error:
            raise FileNotFoundError(str(error)) from None
    cfg = load_config(config, cfg_options, work_dir)
    setup_launcher(cfg, launcher)
    if show_dir:
        show_dir = _trigger_visualization(cfg, show_dir, show_interval)
    if tta:
        _apply_tta(cfg, config)
    if out is not None:
        cfg.test_evaluator["output_dir"] = out
        cfg.test_evaluator["keep_results"] = True
    plan = plan_submission(cfg, format_only) if format_only else None
    if plan is None:
        configure_test_evaluator(cfg, metric, tables)
    elif not plan["todo"]:  # a finished submission: only the zip again
        return _finish_submission(format_only, plan)
    if not strict:
        cfg.load_from = checkpoint
    with termination_as_interrupt():
        runner = build_runner(cfg, verbose)
        model = getattr(runner.model, "module", runner.model)  # DDP / TTA wrappers
        if strict:
            load_weights(model, checkpoint, config=config)
        resolved = (speed or SpeedPolicy()).resolve(default_device())
        if resolved.name != "fp32":
            if not strict:  # the Runner loads ``load_from`` in test(): load it now, then apply
                runner.load_or_resume()
                runner._load_from = None
            apply_inference_speed(model, resolved)
            announce(resolved)
        metrics = runner.test()
    del model
    release_runner(runner)
    if show_dir:
        print_log(f"painted predictions: {show_dir}", logger="current")
    if plan is not None and is_main_process():
        return _finish_submission(format_only, plan)
    return metrics


def _finish_submission(out_dir: str, plan: dict) -> dict:
    zip_path = zip_submission(out_dir, plan["names"])
    print_log(
        f"submission ({plan['layout']}): {plan['todo']} PNGs written, {plan['done']} already "
        f"there, {plan['total']} in {out_dir}; upload {zip_path}",
        logger="current",
    )
    return {"format_only": out_dir, "zip": zip_path, "written": plan["todo"], "kept": plan["done"]}
