"""Train the local baseline and the non-local family under one budget on the built-in
long-range set, several seeds each, through mmengine's Runner; tabulate and plot.

Each run's validation mIoU over training comes from the ``scalars.json`` that mmengine's
``LocalVisBackend`` writes. Peak memory is that of one training step (forward + backward) at the
training batch size, measured with ``ann_seg.benchmark``'s tensor-peak tracker (live tensor
bytes above the level before the step, not process RSS).
"""

import glob
import json
import os.path as osp
import statistics
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from ann_seg.io import atomic_write_json, atomic_write_text, markdown_table, save_figure
from ann_seg.mmseg import build_segmentor, load_config, packaged_config
from ann_seg.mmseg.runner import build_runner
from ann_seg.mmseg.synthetic import generate_long_range_dataset

from .measure import measure_peak_memory

HEADS = {
    "fcn": "fcn_r18-d8_1xb8-400it_synthetic-64x128.py",
    "nonlocal": "nonlocal_r18-d8_1xb8-400it_synthetic-64x128.py",
    "cgnl": "cgnl_r18-d8_1xb8-400it_synthetic-64x128.py",
    "apnb": "apnb_r18-d8_1xb8-400it_synthetic-64x128.py",
    "ann": "ann_r18-d8_1xb8-400it_synthetic-64x128.py",
}
DATA_SIZE = (64, 128)


def config_path(head: str) -> str:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose from {sorted(HEADS)}")
    return packaged_config(f"compare/{HEADS[head]}")


def _read_curve(work_dir: str) -> List[Dict[str, float]]:
    """``[{'iter': i, 'mIoU': m, 'mAcc': a, 'aAcc': p}, ...]`` from the run's validation
    scalars. Any input-independent predictor scores mAcc = 100 / num_classes: chance."""
    curve = []
    for path in sorted(glob.glob(osp.join(work_dir, "*", "vis_data", "scalars.json"))):
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
    """Tensor peak of one training step of ``cfg``'s model on a random batch."""
    model = build_segmentor(cfg).train()
    h, w = DATA_SIZE
    batch = cfg.train_dataloader.batch_size
    images = torch.randn(batch, 3, h, w)
    samples = []
    for _ in range(batch):
        sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 5, (1, h, w))))
        sample.set_metainfo(dict(img_shape=(h, w), pad_shape=(h, w)))
        samples.append(sample)

    def step():
        losses = model.loss(images, samples)
        sum(v for k, v in losses.items() if "loss" in k).backward()

    return measure_peak_memory(step) / float(1 << 20)


def run_one(
    head: str, seed: int, data_root: str, work_dir: str, max_iters: int, val_interval: int
) -> dict:
    warmup = max(1, min(50, max_iters // 5))
    options = {
        "randomness.seed": seed,
        "train_cfg.max_iters": max_iters,
        "train_cfg.val_interval": val_interval,
        "default_hooks.checkpoint.interval": max_iters,
        "param_scheduler.0.end": warmup,
        "param_scheduler.1.begin": warmup,
        "param_scheduler.1.end": max_iters,
        "default_hooks.visualization.draw": False,
        # mmseg names its visualizer 'visualizer'; mmengine would hand every later
        # Runner of this process the first one, writing to the first run's directory
        "visualizer.name": f"compare_{head}_seed{seed}_{time.time_ns()}",
    }
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        options[f"{loader}.dataset.data_root"] = data_root
    cfg = load_config(config_path(head), options, work_dir)
    start = time.perf_counter()
    runner = build_runner(cfg)
    runner.train()
    seconds = time.perf_counter() - start
    curve = _read_curve(work_dir)
    if not curve:
        raise RuntimeError(f"{head} seed {seed}: no validation mIoU found under {work_dir}")
    return dict(
        head=head,
        seed=seed,
        mIoU=curve[-1]["mIoU"],
        mAcc=curve[-1]["mAcc"],
        curve=curve,
        train_s=round(seconds, 1),
        peak_mib=round(train_step_peak_mib(cfg), 1),
    )


def summarise(runs: Sequence[dict]) -> List[dict]:
    rows = []
    for head in dict.fromkeys(r["head"] for r in runs):
        mine = [r for r in runs if r["head"] == head]
        values = [r["mIoU"] for r in mine]
        rows.append(
            dict(
                head=head,
                config=HEADS[head],
                seeds=[r["seed"] for r in mine],
                mIoU=values,
                mean=statistics.fmean(values),
                std=statistics.stdev(values) if len(values) > 1 else 0.0,
                train_s=statistics.fmean(r["train_s"] for r in mine),
                peak_mib=max(r["peak_mib"] for r in mine),
            )
        )
    return rows


def results_table(rows: Sequence[dict]) -> str:
    """Markdown table of ``summarise``'s rows."""
    header = [
        "head",
        "mIoU mean ± std",
        "per seed",
        "train time / run (s)",
        "train-step peak (MiB)",
    ]
    body = [
        [
            row["head"],
            f"{row['mean']:.1f} ± {row['std']:.1f}",
            ", ".join(f"{v:.1f}" for v in row["mIoU"]),
            f"{row['train_s']:.0f}",
            f"{row['peak_mib']:.0f}",
        ]
        for row in rows
    ]
    return markdown_table(header, body, align="lllrr")


def plot_curves(runs: Sequence[dict], path: str) -> None:
    import matplotlib  # optional heavy dependency, only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for head in dict.fromkeys(r["head"] for r in runs):
        curves = [r["curve"] for r in runs if r["head"] == head]
        iters = [p["iter"] for p in curves[0]]
        values = np.array([[p["mIoU"] for p in c][: len(iters)] for c in curves])
        mean = values.mean(0)
        ax.plot(iters, mean, marker="o", label=head)
        if len(values) > 1:
            ax.fill_between(iters, values.min(0), values.max(0), alpha=0.2)
    ax.set_xlabel("training iteration")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title("Long-range synthetic set: mean over seeds (band: min-max)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def compare_heads(
    heads: Sequence[str] = tuple(HEADS),
    seeds: Sequence[int] = (0, 1, 2),
    max_iters: int = 400,
    val_interval: int = 100,
    data_root: str = "data/synthetic_long_range_64x128",
    work_dir: str = "work_dirs/compare_heads",
    num_train: int = 400,
    num_val: int = 60,
    plot: Optional[str] = None,
) -> dict:
    """Train every head with every seed; write ``results.json``, ``results.md`` and the plot."""
    for head in heads:
        config_path(head)
    generate_long_range_dataset(
        data_root, num_train=num_train, num_val=num_val, size=DATA_SIZE, seed=0, progress=False
    )
    runs = []
    for seed in seeds:
        for head in heads:
            runs.append(
                run_one(
                    head,
                    seed,
                    data_root,
                    osp.join(work_dir, f"{head}_seed{seed}"),
                    max_iters,
                    val_interval,
                )
            )
    rows = summarise(runs)
    result = dict(
        max_iters=max_iters,
        val_interval=val_interval,
        seeds=list(seeds),
        data=dict(root=data_root, size=DATA_SIZE, num_train=num_train, num_val=num_val),
        rows=rows,
        runs=runs,
    )
    atomic_write_json(osp.join(work_dir, "results.json"), result)
    atomic_write_text(osp.join(work_dir, "results.md"), results_table(rows) + "\n")
    plot_curves(runs, plot or osp.join(work_dir, "miou_curves.png"))
    return result
