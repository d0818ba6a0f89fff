"""The main job: build the synthetic set, train the demo config, evaluate, write predictions.

Everything goes through mmengine's Runner with the demo config, exactly as
``ann-seg train``/``ann-seg test`` would run it; re-running resumes or skips finished work
(a final checkpoint that does not load is moved aside and training resumes).
"""

import os.path as osp
import time
from typing import Optional

from mmengine.config import Config

from ann_seg.inference import LoaderOptions, OutputOptions, run_inference
from ann_seg.io import atomic_write_json
from ann_seg.mmseg import checkpoint_loads, load_config, packaged_config
from ann_seg.mmseg.runner import test, train
from ann_seg.mmseg.speed import SpeedPolicy
from ann_seg.mmseg.synthetic import generate_long_range_dataset

DEMO_CONFIG = packaged_config("demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py")


def train_to_final(cfg: Config, speed: Optional[SpeedPolicy] = None) -> str:
    """``work_dir/iter_<max_iters>.pth`` of ``cfg``: kept if it loads, else (absent, or
    truncated by a kill: moved aside to ``.corrupt``) trained, resuming from the newest
    checkpoint that loads."""
    final = osp.join(cfg.work_dir, f"iter_{cfg.train_cfg.max_iters}.pth")
    if not (osp.isfile(final) and checkpoint_loads(final)):
        train(cfg, resume=True, speed=speed, verbose=False)
    if not osp.isfile(final):
        raise FileNotFoundError(
            f"training finished without writing {final}: the config's checkpoint hook must "
            f"save at iteration {cfg.train_cfg.max_iters}"
        )
    return final


def run_demo(
    config: str = DEMO_CONFIG,
    data_root: str = "data/synthetic_long_range",
    work_dir: str = "work_dirs/demo",
    num_train: int = 400,
    num_val: int = 60,
    max_iters: Optional[int] = None,
    seed: int = 0,
    fast: bool = False,
) -> dict:
    """Generate data, train (resuming if interrupted), test the final checkpoint (mIoU; label
    maps via ``IoUMetric``'s output_dir), then run folder inference on the val images (palette
    label maps and colour overlays, mirrored by file name). ``fast``: every step with the speed
    policy's ``--fast``. Returns and writes ``summary.json``."""
    timings = {}
    start = time.perf_counter()
    data = generate_long_range_dataset(
        data_root, layout="cityscapes", num_train=num_train, num_val=num_val, seed=seed
    )
    timings["data_s"] = round(time.perf_counter() - start, 1)

    options = {
        "train_dataloader.dataset.data_root": data_root,
        "val_dataloader.dataset.data_root": data_root,
        "test_dataloader.dataset.data_root": data_root,
        "randomness.seed": seed,
    }
    if max_iters is not None:
        warmup = max(1, min(50, max_iters // 5))
        options.update(
            {
                "param_scheduler.0.end": warmup,
                "param_scheduler.1.begin": warmup,
                "train_cfg.max_iters": max_iters,
                "train_cfg.val_interval": max_iters,
                "default_hooks.checkpoint.interval": max_iters,
                "param_scheduler.1.end": max_iters,
            }
        )
    cfg = load_config(config, options, work_dir)

    start = time.perf_counter()
    final = train_to_final(cfg, SpeedPolicy.fast("train") if fast else None)
    timings["train_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    pred_dir = osp.join(work_dir, "predictions")
    metrics = test(
        cfg,
        final,
        out=pred_dir,
        cfg_options={"test_dataloader.num_workers": 0, "test_dataloader.persistent_workers": False},
        speed=SpeedPolicy.fast("test") if fast else None,
        verbose=False,
    )
    timings["test_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    overlay_dir = osp.join(work_dir, "inference")
    run_inference(
        cfg,
        final,
        osp.join(data_root, "leftImg8bit", "val"),
        overlay_dir,
        outputs=OutputOptions(overlay=True),
        loader=LoaderOptions(recursive=True, batch_size=8),
        speed=SpeedPolicy.fast("infer") if fast else None,
    )
    timings["inference_s"] = round(time.perf_counter() - start, 1)

    summary = dict(
        config=config,
        checkpoint=final,
        data_root=data_root,
        num_train=data["num_train"] if "num_train" in data else num_train,
        num_val=num_val,
        metrics={k: float(v) for k, v in metrics.items()},
        predictions=pred_dir,
        overlays=osp.join(overlay_dir, "overlays"),
        timings=timings,
        fast=fast,
    )
    atomic_write_json(osp.join(work_dir, "summary.json"), summary)
    return summary
