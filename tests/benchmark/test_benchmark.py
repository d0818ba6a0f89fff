"""Benchmark tools: memory tracker, interleaved timing, config and block benchmarks at tiny
sizes (one CLI run in a fresh interpreter; the rest in-process, single-threaded)."""

import json
import math
import os.path as osp
import subprocess
import sys

import pytest
import torch
from _helpers import CONFIGS, REPO, load_tool

from ann_seg.benchmark import (
    BenchmarkSettings,
    PeakMemoryTracker,
    TimingCase,
    benchmark_configs,
    build_benchmark_model,
    feature_shapes,
    latency_stats,
    measure_peak_memory,
    run_benchmark,
    time_interleaved,
)
from ann_seg.benchmark.blocks import BLOCK_NAMES, BlockDims, benchmark_blocks
from ann_seg.benchmark.models import count_complexity
from ann_seg.layers import APNB

DEMO = osp.join(CONFIGS, "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")
SHAPE = (32, 64)
MIB = 1 << 20

# mmseg's own ANN config shrunk to a quarter-width ResNet-18 (an mmseg:: base, no download)
MMSEG_TINY = """
_base_ = ['mmseg::ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    backbone=dict(depth=18, stem_channels=16, base_channels=16, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[64, 128], channels=32, project_channels=16,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=16, norm_cfg=norm_cfg))
"""


@pytest.fixture(scope="module")
def mmseg_tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "mmseg_ann_tiny.py"
    path.write_text(MMSEG_TINY)
    return str(path)


def finite(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def check_ok_row(row, batch_size=1):
    assert row["status"] == "ok", row
    lat = row["latency_ms"]
    assert finite(*lat.values()) and 0 < lat["min"] <= lat["median"] <= lat["max"]
    assert len(row["times_ms"]) == row["repeats"] > 0
    assert row["throughput_img_s"] == pytest.approx(batch_size / lat["median"] * 1e3)
    assert finite(row["peak_memory_mib"], row["params_m"]) and row["peak_memory_mib"] > 0
    assert row["params_m"] > 0
    assert finite(row["latency_ratio"], row["memory_ratio"]) and row["latency_ratio"] > 0


# ---------------------------------------------------------------------------- measurement


def test_cpu_memory_tracker_sees_a_known_allocation():
    with PeakMemoryTracker("cpu") as tracker:
        big = torch.ones(64 * MIB, dtype=torch.uint8)
        del big
        small = torch.ones(16 * MIB, dtype=torch.uint8)  # freed memory is not peak
    assert 64 * MIB <= tracker.peak_bytes < 64 * MIB + MIB
    del small

    # a temporary inside a kernel-level op sequence: (a + 1) * 2 holds two 32 MiB tensors
    a = torch.ones(8 * MIB)  # allocated before: not counted
    peak = measure_peak_memory(lambda: (a + 1) * 2)
    assert 64 * MIB <= peak < 64 * MIB + MIB


def test_time_interleaved_rotates_and_isolates_failures():
    calls = []

    def failing():
        calls.append("bad")
        raise RuntimeError("shape not supported")

    cases = [TimingCase(name, (lambda n=name: calls.append(n))) for name in "ab"]
    cases.insert(1, TimingCase("bad", failing))
    time_interleaved(cases, repeat=3, warmup=1, progress=False)
    assert calls.count("bad") == 1 and isinstance(cases[1].error, RuntimeError)
    assert [len(c.times) for c in cases] == [3, 0, 3]
    # round r runs the cases rotated by r % 3: a bad b | (bad) b a | b a (bad) | a (bad) b
    assert calls == ["a", "bad", "b", "b", "a", "b", "a", "a", "b"]
    stats = latency_stats([0.001, 0.003, 0.002])
    assert stats["median"] == pytest.approx(2.0) and stats["max"] == pytest.approx(3.0)


def test_feature_shapes_match_the_backbone():
    _, model = build_benchmark_model(DEMO)
    model.eval()
    with torch.no_grad():
        real = [tuple(f.shape) for f in model.extract_feat(torch.zeros(2, 3, 40, 72))]
    assert feature_shapes(model, (40, 72), batch_size=2) == real
    assert real[0] == (2, 16, 10, 18) and real[3] == (2, 128, 5, 9)  # D8: H/4, then H/8


# ------------------------------------------------------------------------ config benchmark


@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize("part", ["model", "backbone", "head"])
def test_parts_and_modes(part, mode, mmseg_tiny, single_thread):
    settings = BenchmarkSettings(part=part, mode=mode, repeat=2, warmup=1, flops=mode == "infer")
    rows = benchmark_configs([DEMO, mmseg_tiny], settings, [SHAPE], progress=False)
    assert [r["name"] for r in rows] == [
        "ann_r18-d8_1xb8-600it_synthetic-128x256",
        "mmseg_ann_tiny",
    ]
    for row in rows:
        check_ok_row(row)
        assert row["shape"] == list(SHAPE) and (row["part"], row["mode"]) == (part, mode)
        if mode == "infer":
            assert finite(row["flops_g"]) and row["flops_g"] > 0
    assert rows[0]["latency_ratio"] == 1.0 and rows[1]["reference"] == rows[0]["name"]
    if part == "head":  # features of a quarter-width R-18-D8 at 32x64: 64 and 128 ch at 4x8
        assert rows[0]["input_shapes"][2:] == [[1, 64, 4, 8], [1, 128, 4, 8]]


def test_bad_config_option_and_unusable_shape_are_error_rows(single_thread):
    bad = BenchmarkSettings(
        repeat=1, warmup=0, flops=False, cfg_options={"model.decode_head.share": "bogus"}
    )
    (row,) = benchmark_configs([DEMO], bad, [SHAPE], progress=False)
    assert row["status"] == "error" and row["stage"] == "build" and "share" in row["error"]

    # 8x8 input: 1x1 features, and BatchNorm cannot train on one value per channel
    train = BenchmarkSettings(mode="train", repeat=1, warmup=0, flops=False)
    rows = benchmark_configs([DEMO], train, [(8, 8), SHAPE], progress=False)
    assert rows[0]["status"] == "error" and rows[0]["stage"] == "run"
    assert "more than 1 value per channel" in rows[0]["error"]
    check_ok_row(rows[1])


def test_cli_json_plot_and_failed_config(tmp_path, mmseg_tiny):
    out, png = tmp_path / "bench.json", tmp_path / "plot.png"
    broken = tmp_path / "broken.py"  # exists, fails to build (an unregistered type: refused
    # up front by load_config, as a mistyped key is)
    broken.write_text(f"_base_ = [{DEMO!r}]\nmodel = dict(backbone=dict(depth=7))\n")
    broken = str(broken)
    args = [
        "tools/benchmark.py",
        DEMO,
        broken,
        mmseg_tiny,
        "--shapes",
        "32",
        "64",
        "48",
        "96",
        "--repeat",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--json",
        str(out),
        "--plot",
        str(png),
        "--no-progress",
    ]
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # a config failed; the others measured
    assert "| mmseg_ann_tiny | 48x96 |" in proc.stdout and "**error (build)**" in proc.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["memory_method"].startswith("torch.profiler")
    assert data["settings"]["part"] == "model" and data["meta"]["threads"] == 1
    rows = data["results"]
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 2 and all(r["stage"] == "build" for r in errors)
    assert "invalid depth 7" in errors[0]["error"] and errors[0]["config"] == broken
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted((r["name"], tuple(r["shape"])) for r in ok) == [
        (name, shape)
        for name in ("ann_r18-d8_1xb8-600it_synthetic-128x256", "mmseg_ann_tiny")
        for shape in ((32, 64), (48, 96))
    ]
    for row in ok:
        check_ok_row(row)
        assert finite(row["flops_g"]) and row["flops_g"] > 0
    ref = {tuple(r["shape"]): r for r in ok if r["name"].startswith("ann_r18")}
    for row in ok:
        base = ref[tuple(row["shape"])]
        expected = row["latency_ms"]["median"] / base["latency_ms"]["median"]
        assert row["latency_ratio"] == pytest.approx(expected)
        assert row["memory_ratio"] == pytest.approx(
            row["peak_memory_mib"] / base["peak_memory_mib"]
        )
    blob = png.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(blob) < 500_000


# ------------------------------------------------------------------------- block benchmark


def test_block_benchmark_all_rows(tmp_path, capsys, single_thread):
    out = tmp_path / "blocks.json"
    tool = load_tool("benchmark_blocks")
    status = tool.main(
        [
            "--shape",
            "8",
            "16",
            "--in-channels",
            "64",
            "--key-channels",
            "16",
            "--low-channels",
            "32",
            "--repeat",
            "2",
            "--warmup",
            "1",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "| apnb_attention |" in printed and "paper" in printed
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == list(BLOCK_NAMES)
    for name, row in rows.items():
        assert row["status"] == "ok", row
        assert finite(
            row["time_ms"]["mean"],
            row["peak_mib"],
            row["net_time_ms"],
            row["net_peak_mib"],
            row["estimate_mib"],
        )
        if name != "identity":
            assert row["peak_mib"] > 0 and set(row["speedup_vs"]) == {"nl_explicit", "nl_sdpa"}
            assert row["net_time_ms"] == pytest.approx(
                row["time_ms"]["mean"] - rows["identity"]["time_ms"]["mean"]
            )
    nl = rows["nl_explicit"]
    assert nl["speedup_vs"]["nl_explicit"] == pytest.approx(1.0)
    apnb = rows["apnb"]
    assert apnb["speedup_vs"]["nl_explicit"] == pytest.approx(
        nl["net_time_ms"] / apnb["net_time_ms"]
    )
    assert apnb["memory_saving_vs"]["nl_sdpa"] == pytest.approx(
        rows["nl_sdpa"]["net_peak_mib"] / apnb["net_peak_mib"]
    )
    units = data["paper_comparison"]["attention_units"]
    assert units["block"] == "apnb_attention" and finite(units["speedup"], units["memory_saving"])


def test_block_rows_over_the_memory_budget_are_skipped(single_thread):
    dims = BlockDims(64, 16, 32)
    # 96x96 = 9216 positions: an explicit N x N float32 matrix alone is 324 MiB
    result = benchmark_blocks(
        (96, 96),
        dims,
        rows=["nl_explicit", "apnb_attention"],
        repeat=1,
        warmup=0,
        max_memory_gb=0.25,
        progress=False,
    )
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["identity", "nl_explicit", "apnb_attention"]
    skipped = rows["nl_explicit"]
    assert skipped["status"] == "skipped" and "--max-memory-gb" in skipped["error"]
    assert 2 * 324 <= skipped["estimate_mib"] < 2 * 324 + 100  # two N x N matrices + linear
    assert rows["apnb_attention"]["status"] == "ok"
    assert rows["apnb_attention"]["speedup_vs"] == {}  # no reference measured


# ------------------------------------------------------------------- FLOPs and FLOP rate


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_flop_count_of_a_folded_block(layout):
    """Folding removes W_o (N Cv Ca) and the fusion BN (mmengine: 2 per element), and shrinks
    the fusion GEMM from (Ca + C) to (Cv + C) inputs; the count must see the folded GEMMs
    (addmm_/baddbmm) as well."""
    c, out, key, value, h, w = 48, 40, 16, 24, 6, 10
    block = APNB(c, out, key, value_channels=value).eval()
    x = torch.randn(1, c, h, w).contiguous(memory_format=layout)
    plain = count_complexity(block, (x,))["flops"]
    block.fold_()
    folded = count_complexity(block, (x,))["flops"]
    n = h * w
    removed = n * value * out + n * (out + c) * out + 2 * n * out
    assert plain - folded == removed - n * (value + c) * out


def test_flop_rate_is_timed_with_the_configs(mmseg_tiny, single_thread, capsys):
    with pytest.raises(ValueError, match="FLOP counting"):
        BenchmarkSettings(flops=False, flop_rate=True)
    settings = BenchmarkSettings(part="head", repeat=2, warmup=0, flop_rate=True)
    assert run_benchmark([DEMO, DEMO + "+fuse"], settings, [SHAPE], progress=False) == 0
    printed = capsys.readouterr().out
    assert "ann_r18-d8_1xb8-600it_synthetic-128x256+fuse at 32x64:" in printed
    assert "% of the reference (3x3 conv 2048->512 at 64x128" in printed


def test_flop_rate_rows(single_thread):
    settings = BenchmarkSettings(part="head", repeat=2, warmup=0, flop_rate=True)
    rows = benchmark_configs([DEMO, DEMO + "+fuse"], settings, [SHAPE], progress=False)
    assert rows[0]["reference_conv_gflop_s"] == rows[1]["reference_conv_gflop_s"] > 0
    for row in rows:
        seconds = row["latency_ms"]["median"] / 1e3
        assert row["achieved_gflop_s"] == pytest.approx(2 * row["flops_g"] / seconds)
        assert row["flop_rate_ratio"] == pytest.approx(
            row["achieved_gflop_s"] / row["reference_conv_gflop_s"]
        )
    assert rows[1]["flops_g"] < rows[0]["flops_g"]  # W_o and the fusion input folded away


def test_compile_variant_is_timed_and_counted(single_thread):
    """+compile (inductor) runs the same head; FLOPs are counted on the eager forward."""
    torch._dynamo.reset()
    settings = BenchmarkSettings(part="head", repeat=1, warmup=1)
    rows = benchmark_configs(
        [DEMO + "+fuse", DEMO + "+fuse+compile"], settings, [SHAPE], progress=False
    )
    for row in rows:
        check_ok_row(row)
    assert rows[1]["flops_g"] == pytest.approx(rows[0]["flops_g"])

    _, eager = build_benchmark_model(DEMO + "+fuse")
    _, compiled = build_benchmark_model(DEMO + "+fuse+compile")
    compiled.load_state_dict(eager.state_dict())
    feats = [torch.randn(1, c, 4, 8) for c in (16, 32, 64, 128)]
    with torch.no_grad():
        torch.testing.assert_close(
            compiled.decode_head.forward(feats),
            eager.decode_head.forward(feats),
            rtol=1e-4,
            atol=1e-5,
        )
