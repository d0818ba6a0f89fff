"""The head comparison at a tiny budget: table, plot, and every head learns above chance."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_compare_heads_tiny_budget(tmp_path):
    from ann_seg.benchmark.compare import HEADS, compare_heads

    result = compare_heads(
        seeds=(0,),
        max_iters=150,
        val_interval=75,
        data_root=str(tmp_path / "data"),
        work_dir=str(tmp_path / "work"),
        num_train=48,
        num_val=16,
    )
    rows = {row["head"]: row for row in result["rows"]}
    assert set(rows) == set(HEADS)
    table = (tmp_path / "work" / "results.md").read_text()
    assert all(f"| {head} |" in table for head in HEADS)
    saved = json.loads((tmp_path / "work" / "results.json").read_text())
    assert len(saved["runs"]) == len(HEADS)
    png = (tmp_path / "work" / "miou_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    chance_macc = 100.0 / 5  # any input-independent predictor: 5 classes -> mAcc 20 %
    for run in result["runs"]:
        assert [p["iter"] for p in run["curve"]] == [75, 150]
        assert run["mAcc"] > chance_macc + 5, (run["head"], run["curve"])
        assert run["peak_mib"] > 0 and run["train_s"] > 0
