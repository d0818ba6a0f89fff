"""Folder-inference throughput benchmark (``python -m research.folder_throughput``): the
cost arithmetic against hand-computed cases, and tiny runs of every mode and of the scaling
sweep through the real tools (infer.py, dist_infer.sh with torchrun, MMSegInferencer)."""

import json
import os.path as osp
import subprocess
import sys

import pytest

from research.throughput import (
    MMSEG,
    REFERENCE,
    cost_curve,
    decile_costs,
    loader_grid_modes,
    run_throughput,
    throughput_table,
)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, "configs", "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")
TOOLS = osp.join(REPO, "tools")


def test_decile_costs_by_hand():
    # 20 images finished at 1.0, 1.5, ..., 10.5 s, model ready at 0: the first 2 took 1.5 s,
    # the last 2 (from the 18th at 9.5 s to the 20th at 10.5 s) took 1.0 s
    times = [1.0 + 0.5 * i for i in range(20)]
    assert decile_costs(0.0, times[::-1]) == pytest.approx({"first_ms": 750.0, "last_ms": 500.0})


def test_cost_curve_by_hand():
    # ready at 1 s; images done at 2, 3, 5, 9 s (given unsorted); 2 slices of 2 images:
    # (3 - 1) / 2 = 1 s and (9 - 3) / 2 = 3 s per image
    assert cost_curve(1.0, [9.0, 2.0, 5.0, 3.0], points=2) == [[2, 1000.0], [4, 3000.0]]
    # more slices than images: one image per slice
    assert cost_curve(0.0, [1.0, 3.0], points=50) == [[1, 1000.0], [2, 2000.0]]


@pytest.mark.slow
def test_every_mode_segments_the_folder_and_agrees(tmp_path):
    result = run_throughput(DEMO, TOOLS, str(tmp_path), count=12, threads=2, progress=False)
    rows = {row["mode"]: row for row in result["rows"]}
    assert len(rows) == 5
    for name, row in rows.items():
        assert "error" not in row, (name, row.get("error"))
        assert row["img_s"] > 0 and row["first_ms"] > 0 and row["last_ms"] > 0, row
        # the label maps of every mode, mmseg's inferencer included, equal the sequential loop's
        assert row["images_differing"] == 0 and row["pixel_agreement"] == 1.0, name
    assert "dist_infer.sh" in rows["2 ranks x 1 thread(s)"]["command"]
    assert "--workers 2 --batch-size 4" in rows["pipelined (workers 2, batch 4)"]["command"]
    table = throughput_table(result)
    assert table.count("identical") == 5 and MMSEG in table and REFERENCE in table


@pytest.mark.slow
def test_scaling_cli_writes_table_plot_and_curves(tmp_path):
    out = tmp_path / "scaling.json"
    plot = tmp_path / "scaling.png"
    command = [sys.executable, "-m", "research.folder_throughput", DEMO]
    command += ["--scaling", "10", "30", "--threads", "2", "--no-progress"]
    command += ["--work-dir", str(tmp_path / "work"), "--json", str(out), "--plot", str(plot)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["images"], r["mode"]) for r in rows] == [
        (n, m) for n in (10, 30) for m in (REFERENCE, "2 ranks x 1 thread(s)")
    ]
    for row in rows:
        assert "error" not in row, row
        # every image counted once along the curve, in slices of one image for 10 and 30
        assert [done for done, _ in row["curve"]] == list(range(1, row["images"] + 1))
        assert all(cost >= 0 for _, cost in row["curve"])
    assert "| 2 ranks x 1 thread(s) | 30 |" in proc.stdout
    assert plot.stat().st_size > 10_000
    # the 30-image folder's outputs are removed after each run, its images kept
    assert not (tmp_path / "work" / "out" / "scaling_30_0").exists()
    assert len(list((tmp_path / "work" / "images_30").iterdir())) == 30


def test_loader_grid_modes_start_with_the_sequential_loop():
    modes = loader_grid_modes(2, workers=[2, 0], batch_sizes=[4, 1])
    assert modes[0].name == REFERENCE and tuple(modes[0].args) == ()
    assert [tuple(m.args) for m in modes[1:]] == [
        ("--workers", "2", "--batch-size", "4"),
        ("--workers", "2", "--batch-size", "1"),
        ("--workers", "0", "--batch-size", "4"),
    ]
    assert all(m.threads == 2 and m.ranks is None for m in modes)
    # a pair given twice is run once (the modes are told apart by name)
    assert [m.name for m in loader_grid_modes(1, workers=[0, 0], batch_sizes=[1, 4])] == [
        REFERENCE,
        "workers 0, batch 4",
    ]
    with pytest.raises(ValueError, match="batch sizes >= 1"):
        loader_grid_modes(2, workers=[0], batch_sizes=[0])


@pytest.mark.slow
def test_loader_grid_cli_runs_every_pair_with_identical_labels(tmp_path):
    out = tmp_path / "grid.json"
    command = [sys.executable, "-m", "research.folder_throughput", DEMO]
    command += ["--loader-grid", "--grid-workers", "0", "1", "--grid-batch-sizes", "1", "3"]
    command += ["--images", "11", "--threads", "1", "--no-progress", "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == [
        REFERENCE,
        "workers 0, batch 3",
        "workers 1, batch 1",
        "workers 1, batch 3",
    ]
    for row in rows:  # 11 images in batches of 3: a short last batch, same labels
        assert "error" not in row, row
        assert row["images_differing"] == 0 and row["pixel_agreement"] == 1.0, row["mode"]
    assert "--workers 1 --batch-size 3" in rows[3]["command"]
    bad = subprocess.run(
        command[:4] + ["--loader-grid", "--scaling", "10"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--scaling and --loader-grid" in bad.stderr
