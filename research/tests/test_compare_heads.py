"""The context-head study: statistics against hand-computed values, every mmseg head config
training a step on the built-in data, a tiny study end to end (table, Pareto and sweep plots),
and resuming after a kill without retraining a finished run."""

import json
import math
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.optim import build_optim_wrapper
from mmseg.registry import DATASETS

from ann_seg.mmseg import build_segmentor, load_config
from ann_seg.mmseg.synthetic import generate_long_range_dataset, render_long_range_sample
from research.head_study import (
    StudySettings,
    add_paired_differences,
    compare_heads,
    results_table,
    run_paths,
    summarise,
    sweep_results,
    sweep_table,
    trivial_miou,
)
from research.study_runs import HEADS, NUM_CLASSES, config_path, last_attempt, run_spec
from research.study_stats import pareto_front, t_interval

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

PNG = b"\x89PNG\r\n\x1a\n"


def test_t_interval_against_a_hand_computed_case():
    # 1..5: mean 3, s = sqrt(2.5), t(0.975, 4) = 2.7764 (printed tables), half-width
    # 2.7764 * sqrt(2.5 / 5) = 1.9632
    mean, low, high = t_interval([1, 2, 3, 4, 5])
    assert mean == 3 and low == pytest.approx(3 - 1.9632, abs=1e-3)
    assert high == pytest.approx(3 + 1.9632, abs=1e-3)
    # two values 2, 4: s = sqrt(2), t(0.975, 1) = 12.706, half-width 12.706 * sqrt(2) / sqrt(2)
    assert t_interval([2.0, 4.0])[1:] == pytest.approx((3 - 12.706, 3 + 12.706), abs=1e-2)
    # 90 %: t(0.95, 4) = 2.1318
    assert t_interval([1, 2, 3, 4, 5], 0.90)[2] == pytest.approx(3 + 2.1318 * 0.70711, abs=1e-3)
    single = t_interval([7.5])
    assert single[0] == 7.5 and math.isnan(single[1]) and math.isnan(single[2])
    assert t_interval([4.0] * 5) == (4.0, 4.0, 4.0)
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1, 2], confidence=95)
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])


def test_sweep_takes_every_finished_run_of_the_study_seeds(tmp_path):
    settings = StudySettings(
        heads=["fcn", "ann"],
        seeds=[0, 1, 2],
        sweep_distances=[0.2, 0.4, 0.6],
        sweep_seeds=[0],
        work_dir=str(tmp_path),
    )

    def store(head, seed, distance, miou, spec_change=None):
        spec = dict(run_spec(settings, head, seed, distance), **(spec_change or {}))
        path = run_paths(settings, head, seed, distance)[0]
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(dict(spec=spec, mIoU=miou, curve=[dict(iter=1, mIoU=miou)]), f)

    store("fcn", 1, 0.6, 30.0)  # stored by an earlier --sweep-seeds 1 2 invocation
    store("fcn", 2, 0.6, 40.0)
    store("fcn", 3, 0.6, 99.0)  # not one of the study's seeds: left out
    store("ann", 1, 0.6, 90.0, spec_change=dict(max_iters=4))  # another recipe: left out
    store("ann", 5, 0.4, 99.0)  # the study's distance takes the study's seeds only
    planned = {
        (0.2, "fcn", 0): dict(mIoU=80.0),
        (0.6, "fcn", 0): dict(mIoU=20.0),
        (0.6, "ann", 0): None,  # not finished
        (0.4, "fcn", 0): dict(mIoU=70.0),
        (0.4, "fcn", 1): dict(mIoU=72.0),
        (0.4, "ann", 2): dict(mIoU=74.0),
    }
    sweep = sweep_results(settings, planned)
    assert sweep == {
        "fcn": {0.2: [80.0], 0.4: [70.0, 72.0], 0.6: [20.0, 30.0, 40.0]},
        "ann": {0.4: [74.0]},
    }
    table = sweep_table(sweep)
    assert "| 80.0 | 71.0 (2) | 30.0 (3) |" in table and "| n/a | 74.0 | n/a |" in table


def test_summary_rows_by_hand():
    def run(head, seed, miou):
        return dict(
            spec=dict(head=head, seed=seed),
            mIoU=miou,
            train_s=10.0 + seed,
            train_peak_mib=20.0 + seed,
        )

    runs = [run("ann", 2, 79.0), run("ann", 0, 21.0), run("ann", 1, 80.0), run("fcn", 0, 50.0)]
    rows = summarise(runs, plateau_miou=19.0)
    assert [r["head"] for r in rows] == ["fcn", "ann"]  # HEADS order
    ann = rows[1]
    assert ann["seeds"] == [0, 1, 2] and ann["mIoU"] == [21.0, 80.0, 79.0]
    # mean 60, median 79 (the stalled seed pulls the mean only); 21 <= 19 + 5: on the plateau
    assert ann["mean"] == pytest.approx(60.0) and ann["median"] == 79.0
    assert ann["left_plateau"] == 2 and ann["train_s"] == 11.0 and ann["train_peak_mib"] == 22.0
    assert ann["delta"] == -29.0  # one seed shared with fcn: 21 - 50, no interval
    line = next(x for x in results_table(rows).splitlines() if x.startswith("| ANN (ours"))
    assert "| 60.0 [" in line and "| 79.0 | -29.0 [n/a, n/a] | 21.0, 80.0, 79.0 | 2/3 |" in line


def test_paired_difference_to_the_baseline_against_a_hand_computed_case():
    base = dict(head="fcn", seeds=[0, 1, 2], mIoU=[10.0, 20.0, 30.0])
    other = dict(head="ann", seeds=[2, 0, 1], mIoU=[35.0, 12.0, 21.0])  # seed order differs
    rows = [base, other]
    add_paired_differences(rows, "fcn")
    # differences by seed 2, 1, 5: mean 2.667, s = 2.0817, t(0.975, 2) = 4.3027,
    # half-width 4.3027 * 2.0817 / sqrt(3) = 5.171
    assert other["delta"] == pytest.approx(2.6667, abs=1e-3)
    assert (other["delta_low"], other["delta_high"]) == pytest.approx((-2.505, 7.838), abs=2e-3)
    assert math.isnan(base["delta"])
    lone = [dict(head="ann", seeds=[0], mIoU=[1.0])]  # no baseline: no difference
    add_paired_differences(lone, "fcn")
    assert math.isnan(lone[0]["delta"])


def test_pareto_front_keeps_exactly_the_undominated_points():
    #            cheap+bad   mid+good   dear+best  dominated  equal cost, worse
    points = [(1.0, 10.0), (2.0, 30.0), (5.0, 40.0), (3.0, 20.0), (2.0, 25.0)]
    assert pareto_front(points) == [0, 1, 2]
    assert pareto_front([(1.0, 1.0)]) == [0]
    assert pareto_front([(1.0, 5.0), (1.0, 5.0)]) == [0, 1]  # ties dominate nothing


def test_trivial_miou_is_the_background_fraction_over_the_classes(tmp_path):
    generate_long_range_dataset(tmp_path, num_train=1, num_val=6, size=(64, 128), progress=False)
    labels = [render_long_range_sample(0, "val", i, (64, 128)).label for i in range(6)]
    background = np.mean([(label == 0).mean() for label in labels])  # equal-sized maps
    assert trivial_miou(str(tmp_path)) == pytest.approx(100 * background / NUM_CLASSES)


TORCH = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
# mmseg 1.2.2's DNLHead divides its pairwise weight in place (dnl_head.py, embedded_gaussian),
# which torch 2.1's autograd refuses in backward; torch 2.13's accepts it
DNL_ON_OLD_TORCH = pytest.mark.xfail(
    TORCH < (2, 2), raises=RuntimeError, reason="mmseg's in-place division in DNLHead", strict=True
)
MMSEG_HEADS = [
    pytest.param(name, marks=DNL_ON_OLD_TORCH) if name == "dnl" else name
    for name, head in HEADS.items()
    if head.source == "mmseg"
]


@pytest.mark.parametrize("head", MMSEG_HEADS)
def test_every_mmseg_head_config_trains_a_step_on_the_built_in_data(head, cityscapes_root):
    cfg = load_config(config_path(head), {"train_dataloader.dataset.data_root": cityscapes_root})
    assert cfg.model.pretrained is None and cfg.model.backbone.depth == 18
    heads = cfg.model.decode_head
    assert (heads[-1] if isinstance(heads, list) else heads).loss_decode.type == (
        "WeightedCrossEntropyLoss"
    )
    torch.manual_seed(0)
    model = build_segmentor(cfg).train()
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([dataset[0], dataset[1]])
    before = [p.detach().clone() for p in model.parameters()]
    losses = model.train_step(batch, build_optim_wrapper(model, cfg.optim_wrapper))
    assert all(torch.isfinite(v).all() for k, v in losses.items() if "loss" in k)
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed > 0.9 * len(before), f"{head}: only {changed}/{len(before)} tensors stepped"


TINY = dict(max_iters=6, val_interval=3, num_train=8, num_val=4, cost_repeat=1)


@pytest.mark.slow
def test_tiny_study_writes_table_pareto_and_sweep(tmp_path):
    settings = StudySettings(
        heads=["fcn", "ann", "psp", "ocrnet"],  # two of ours, two of mmseg's (one a cascade)
        seeds=[0],
        sweep_distances=[0.2, 0.4],
        data_root=str(tmp_path / "data"),
        work_dir=str(tmp_path / "work"),
        cost_shape=(64, 128),
        progress=False,
        **TINY,
    )
    result = compare_heads(settings)
    assert result["errors"] == [] and result["finished"] == result["planned"] == 8  # 4 + 4 at 0.2
    assert [row["head"] for row in result["rows"]] == ["fcn", "psp", "ocrnet", "ann"]
    work = tmp_path / "work"
    table = (work / "results.md").read_text()
    for row in result["rows"]:
        assert f"| {row['label']} |" in table
        assert len(row["mIoU"]) == 1 and math.isnan(row["ci_low"])
        cost = result["costs"][row["head"]]
        assert cost["latency_ms"] > 0 and cost["peak_memory_mib"] > 0 and cost["params_m"] > 0.5
    assert "d = 0.2·H" in table and "d = 0.4·H" in table
    assert set(result["sweep"]) == {"fcn", "ann", "psp", "ocrnet"}
    assert all(set(per) == {"0.20", "0.40"} for per in result["sweep"].values())
    for name in ("pareto.png", "sweep.png", "miou_curves.png"):
        data = (work / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, name
    for run in result["runs"]:
        assert [p["iter"] for p in run["curve"]] == [3, 6]
        assert (tmp_path / "data_d0.20").is_dir() or run["spec"]["distance"] == 0.4
    saved = json.loads((work / "results.json").read_text())
    assert saved["finished"] == 8 and saved["plateau_miou"] > 10


@pytest.mark.slow
def test_killed_study_resumes_without_retraining_a_finished_run(tmp_path):
    args = [
        sys.executable, "-m", "research.compare_heads",
        "--heads", "fcn", "psp", "--seeds", "0", "1", "--no-sweep", "--jobs", "1",
        "--max-iters", "4", "--val-interval", "2", "--num-train", "8", "--num-val", "4",
        "--cost-shape", "64", "128", "--cost-repeat", "1",
        "--data-root", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip
    runs = tmp_path / "work" / "runs" / "d0.40"
    first = runs / "fcn_seed0.json"  # the study is seed-major: fcn, psp for seed 0 first
    env = {**os.environ, "PYTHONPATH": REPO}  # research/ is the repository's, not installed
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the study and its worker processes, like a crash
    proc.wait()
    assert first.exists(), "the first run never finished"
    finished_before = sorted(p.name for p in runs.glob("*.json"))
    assert len(finished_before) < 4, "killed too late: every run had finished"
    stored, mtime = first.read_bytes(), first.stat().st_mtime_ns
    assert json.loads(stored)["spec"]["head"] == "fcn"

    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(finished_before)} finished earlier, {4 - len(finished_before)} to train" in (
        rerun.stderr
    )
    assert first.read_bytes() == stored and first.stat().st_mtime_ns == mtime
    assert "fcn seed 0" not in rerun.stderr  # no progress line: not trained again
    assert sorted(p.name for p in runs.glob("*.json")) == [
        "fcn_seed0.json", "fcn_seed1.json", "psp_seed0.json", "psp_seed1.json"
    ]  # fmt: skip
    assert "| FCN (local baseline) |" in rerun.stdout and "4/4 runs finished" in rerun.stdout


def test_a_killed_first_attempt_is_dropped_from_the_curve():
    points = [{"iter": i, "mIoU": float(i)} for i in (100, 200, 100, 200, 300)]
    assert [p["iter"] for p in last_attempt(points)] == [100, 200, 300]
    assert last_attempt(points[2:]) == points[2:]
