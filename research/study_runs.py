"""One run of the head study (``ann_seg.benchmark.compare``): the heads, what decides a run,
and training it in a spawned process that stores its result atomically.

Kept apart from the study's planning, tables and plots so that the code a worker process
imports is only what it runs.
"""

import glob
import json
import os
import os.path as osp
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from ann_seg.benchmark.measure import measure_peak_memory
from ann_seg.io import atomic_write_json
from ann_seg.mmseg import build_segmentor, load_config, packaged_config
from ann_seg.mmseg.runner import build_runner


@dataclass(frozen=True)
class Head:
    name: str
    config: str  # under ann_seg's configs/compare/
    label: str
    source: str  # "ann_seg" or "mmseg"


_SUFFIX = "_r18-d8_1xb8-800it_synthetic-64x128.py"
HEADS: Dict[str, Head] = {
    h.name: h
    for h in (
        Head("fcn", "fcn" + _SUFFIX, "FCN (local baseline)", "ann_seg"),
        Head("psp", "psp" + _SUFFIX, "PSPNet", "mmseg"),
        Head("nonlocal", "nonlocal" + _SUFFIX, "Non-local (ours)", "ann_seg"),
        Head("mmseg-nonlocal", "mmseg-nonlocal" + _SUFFIX, "Non-local (mmseg NLHead)", "mmseg"),
        Head("dnl", "dnl" + _SUFFIX, "DNL", "mmseg"),
        Head("cgnl", "cgnl" + _SUFFIX, "CGNL", "ann_seg"),
        Head("gcnet", "gcnet" + _SUFFIX, "GCNet", "mmseg"),
        Head("danet", "danet" + _SUFFIX, "DANet", "mmseg"),
        Head("ccnet", "ccnet" + _SUFFIX, "CCNet", "mmseg"),
        Head("isanet", "isanet" + _SUFFIX, "ISANet", "mmseg"),
        Head("emanet", "emanet" + _SUFFIX, "EMANet", "mmseg"),
        Head("ocrnet", "ocrnet" + _SUFFIX, "OCRNet", "mmseg"),
        Head("apnb", "apnb" + _SUFFIX, "APNB only (ours)", "ann_seg"),
        Head("ann", "ann" + _SUFFIX, "ANN (ours: AFNB + APNB)", "ann_seg"),
        Head("mmseg-ann", "mmseg-ann" + _SUFFIX, "ANN (mmseg ANNHead)", "mmseg"),
    )
}
DATA_SIZE = (64, 128)
NUM_CLASSES = 5


def check_head(head: str) -> Head:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
    return HEADS[head]


def config_path(head: str) -> str:
    return packaged_config(f"compare/{check_head(head).config}")


def run_spec(settings, head: str, seed: int, distance: float) -> dict:
    """Everything that decides a run's result; a stored result is reused only if it matches."""
    return dict(
        head=head,
        config=check_head(head).config,
        seed=int(seed),
        distance=float(distance),
        max_iters=settings.max_iters,
        val_interval=settings.val_interval,
        num_train=settings.num_train,
        num_val=settings.num_val,
        size=list(DATA_SIZE),
    )


def load_finished(path: str, spec: dict) -> Optional[dict]:
    """The stored result at ``path`` if it is complete and was trained with ``spec``."""
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None  # absent, or unreadable: train again
    if result.get("spec") != spec or not result.get("curve"):
        return None
    result["curve"] = last_attempt(result["curve"])
    return result


def last_attempt(curve: List[Dict[str, float]]) -> List[Dict[str, float]]:
    """The validations of the last training attempt: a run killed and trained again in the same
    work dir left its first attempt's points in front (results stored before ``read_curve``
    read only the newest attempt)."""
    start = 0
    for i in range(1, len(curve)):
        if curve[i]["iter"] <= curve[i - 1]["iter"]:
            start = i
    return curve[start:]


def read_curve(work_dir: str) -> List[Dict[str, float]]:
    """``[{'iter': i, 'mIoU': m, 'mAcc': a, 'aAcc': p}, ...]`` from the validation scalars of
    the newest training in ``work_dir`` (the ``scalars.json`` of mmengine's ``LocalVisBackend``;
    a killed earlier attempt in the same folder is ignored)."""
    curve = []
    attempts = sorted(glob.glob(osp.join(work_dir, "*", "vis_data", "scalars.json")))
    for path in attempts[-1:]:  # mmengine's timestamped folders: the newest is this training
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if "mIoU" in record:
                    curve.append(
                        {
                            "iter": int(record["step"]),
                            "mIoU": float(record["mIoU"]),
                            "mAcc": float(record["mAcc"]),
                            "aAcc": float(record["aAcc"]),
                        }
                    )
    return curve


def train_step_peak_mib(cfg) -> float:
    """Tensor peak of one training step of ``cfg``'s model on a random batch of the study's
    size and batch size (live tensor bytes above the level before the step)."""
    model = build_segmentor(cfg).train()
    h, w = DATA_SIZE
    batch = cfg.train_dataloader.batch_size
    images = torch.randn(batch, 3, h, w)
    samples = []
    for _ in range(batch):
        sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, NUM_CLASSES, (1, h, w))))
        sample.set_metainfo(dict(img_shape=(h, w), pad_shape=(h, w)))
        samples.append(sample)

    def step():
        losses = model.loss(images, samples)
        sum(v for k, v in losses.items() if "loss" in k).backward()

    return measure_peak_memory(step) / float(1 << 20)


def train_run(spec: dict, data_root: str, work_dir: str) -> dict:
    """Train one (head, seed, distance) in this process; the result dict (not yet stored)."""
    iters = spec["max_iters"]
    warmup = max(1, min(50, iters // 5))
    options = {
        "randomness.seed": spec["seed"],
        "train_cfg.max_iters": iters,
        "train_cfg.val_interval": spec["val_interval"],
        "default_hooks.checkpoint.interval": iters,
        "default_hooks.logger.interval": min(50, iters),
        "param_scheduler.0.end": warmup,
        "param_scheduler.1.begin": warmup,
        "param_scheduler.1.end": iters,
        "default_hooks.visualization.draw": False,
        # mmengine hands every later Runner of a process the first visualizer of that name
        "visualizer.name": f"compare_{spec['head']}_seed{spec['seed']}_{time.time_ns()}",
    }
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        options[f"{loader}.dataset.data_root"] = data_root
    cfg = load_config(config_path(spec["head"]), options, work_dir)
    start = time.perf_counter()
    build_runner(cfg).train()
    seconds = time.perf_counter() - start
    curve = read_curve(work_dir)
    if not curve:
        raise RuntimeError(
            f"{spec['head']} seed {spec['seed']}: no validation mIoU under {work_dir}"
        )
    return dict(
        spec=spec,
        mIoU=curve[-1]["mIoU"],
        mAcc=curve[-1]["mAcc"],
        curve=curve,
        train_s=round(seconds, 1),
        train_peak_mib=round(train_step_peak_mib(cfg), 1),
        threads=torch.get_num_threads(),
    )


def run_in_child(spec: dict, data_root: str, work_dir: str, result_path: str, threads: int):
    """Spawned worker: train with ``threads`` threads, log to the work dir, store the result."""
    torch.set_num_threads(threads)
    os.makedirs(work_dir, exist_ok=True)
    log = os.open(osp.join(work_dir, "train.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    result = train_run(spec, data_root, work_dir)
    atomic_write_json(result_path, result)
    return result
