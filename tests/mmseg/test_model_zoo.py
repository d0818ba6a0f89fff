"""Published models by name or URL, offline: mmseg-layout checkpoints built here (mmseg's own
ANNHead/NLHead models of a tiny config, random weights, saved as mmengine saves) are served from
http.server on 127.0.0.1, downloaded once into a temporary torch hub cache, checked and converted
in memory; every refusal is one line and leaves nothing in the cache."""

import hashlib
import http.server
import json
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
import torch
from _helpers import as_cli, randomize_, small_run_options
from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from ann_seg.mmseg import ModelLoadError, build_segmentor, load_config
from ann_seg.mmseg import model_zoo as zoo
from ann_seg.mmseg.config import packaged_config

pytestmark = pytest.mark.usefixtures("single_thread_module")

ANN = "ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py"
NONLOCAL = "nonlocal/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py"
MMSEG_NONLOCAL = "nonlocal_net/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py"
BACKBONE = {
    "model.pretrained": None,
    "model.backbone.depth": 18,
    "model.backbone.norm_cfg.type": "BN",
    "model.decode_head.norm_cfg.type": "BN",
    "model.auxiliary_head.norm_cfg.type": "BN",
    "model.auxiliary_head.in_channels": 256,
    "model.decode_head.channels": 32,
    "model.auxiliary_head.channels": 16,
}
ANN_OURS = dict(BACKBONE, **{"model.decode_head.in_channels": [256, 512]})
ANN_OURS["model.decode_head.key_channels"] = 16
ANN_MMSEG = dict(BACKBONE, **{"model.decode_head.in_channels": [256, 512]})
ANN_MMSEG["model.decode_head.project_channels"] = 16
NL_OPTIONS = dict(BACKBONE, **{"model.decode_head.in_channels": 512})


def mmseg_model(config, options):
    register_all_modules()
    return randomize_(MODELS.build(load_config(f"mmseg::{config}", options).model), std=0.2)


def save_as_mmengine(model, path, **meta):
    """As mmengine's Runner writes a checkpoint (its save_checkpoint, meta + state_dict)."""
    meta = dict(mmseg_version="1.2.2", **meta)
    save_checkpoint({"meta": meta, "state_dict": weights_to_cpu(get_state_dict(model))}, str(path))
    return str(path)


def with_hash(path):
    """Rename ``x.pth`` to ``x-<sha256[:8]>.pth`` as mmseg publishes; returns the new name."""
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()[:8]
    stem, ext = osp.splitext(path)
    os.replace(path, f"{stem}-{digest}{ext}")
    return osp.basename(f"{stem}-{digest}{ext}")


class Server:
    """http.server on 127.0.0.1 (a free port) serving ``root``; counts GET requests."""

    def __init__(self, root):
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name):
        return f"{self.base}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """mmseg checkpoints: ANN (19 and 150 classes), NonLocal, FCN, a truncated file and one
    whose name carries a wrong hash; the reference mmseg models beside them."""
    root = tmp_path_factory.mktemp("served")
    ann = mmseg_model(ANN, ANN_MMSEG)
    nonlocal_ = mmseg_model(MMSEG_NONLOCAL, NL_OPTIONS)
    ade = dict(ANN_MMSEG, **{"model.decode_head.num_classes": 150})
    files = {
        "ann": with_hash(save_as_mmengine(ann, root / "ann_tiny.pth", iter=40000)),
        "nonlocal": with_hash(save_as_mmengine(nonlocal_, root / "nonlocal_tiny.pth")),
        "ade": with_hash(save_as_mmengine(mmseg_model(ANN, ade), root / "ann_ade_tiny.pth")),
        "fcn": with_hash(
            save_as_mmengine(
                mmseg_model(
                    "fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py",
                    dict(BACKBONE, **{"model.decode_head.in_channels": 512}),
                ),
                root / "fcn_tiny.pth",
            )
        ),
    }
    data = open(root / files["ann"], "rb").read()
    (root / "ann_truncated.pth").write_bytes(data[: len(data) // 2])
    files["truncated"] = "ann_truncated.pth"
    shutil.copy(root / files["ann"], root / "ann_tiny-0badc0de.pth")
    files["bad_hash"] = "ann_tiny-0badc0de.pth"
    server = Server(root)
    yield server, files, {"ann": ann, "nonlocal": nonlocal_}, root
    server.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh torch hub cache (TORCH_HOME) for each test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def cached_files(cache):
    return sorted(os.listdir(cache)) if cache.is_dir() else []


def logits(model, seed=0):
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(images, mode="tensor")


def test_download_once_convert_and_match_mmseg(served, cache):
    server, files, reference, _ = served
    url = server.url(files["ann"])
    before = len(server.requests)
    model = build_segmentor(f"ann_seg::{ANN}", cfg_options=ANN_OURS, checkpoint=url)
    assert type(model.decode_head).__name__ == "ANNSegHead"
    assert len(server.requests) == before + 1
    assert cached_files(cache) == [files["ann"]]  # the file as published, nothing else
    expected = logits(reference["ann"])
    assert torch.allclose(logits(model), expected, rtol=1e-4, atol=1e-4)
    # the cache answers the second time: no request
    again = build_segmentor(f"ann_seg::{ANN}", cfg_options=ANN_OURS, checkpoint=url)
    assert len(server.requests) == before + 1
    assert torch.allclose(logits(again), expected, rtol=1e-4, atol=1e-4)
    # a cached file damaged later fails its hash and is fetched again
    (cache / files["ann"]).write_bytes(b"damaged")
    build_segmentor(f"ann_seg::{ANN}", cfg_options=ANN_OURS, checkpoint=url)
    assert len(server.requests) == before + 2


def test_nonlocal_checkpoint_converts_in_memory(served, cache):
    server, files, reference, root = served
    model = build_segmentor(
        f"ann_seg::{NONLOCAL}", cfg_options=NL_OPTIONS, checkpoint=server.url(files["nonlocal"])
    )
    assert type(model.decode_head).__name__ == "NLSegHead"
    expected = logits(reference["nonlocal"])
    rel = (logits(model) - expected).norm() / expected.norm()
    assert rel < 1e-5
    # a local mmseg checkpoint converts the same way, nothing downloaded
    local = build_segmentor(
        f"ann_seg::{NONLOCAL}", cfg_options=NL_OPTIONS, checkpoint=str(root / files["nonlocal"])
    )
    assert torch.equal(logits(local), logits(model))


@pytest.mark.parametrize(
    "which,config,options,message",
    [
        ("truncated", ANN, ANN_OURS, "is not a readable checkpoint"),
        ("bad_hash", ANN, ANN_OURS, "sha256 does not start with 0badc0de"),
        ("fcn", ANN, ANN_OURS, "is not an ANN or NonLocal model"),
        ("ade", ANN, ANN_OURS, "has 150 classes"),
        ("nonlocal", ANN, ANN_OURS, "is a NonLocal model"),
    ],
)
def test_refusals_are_one_line_and_keep_nothing_bad(served, cache, which, config, options, message):
    server, files, _, _ = served
    with pytest.raises(ModelLoadError, match=message) as info:
        build_segmentor(
            f"ann_seg::{config}", cfg_options=options, checkpoint=server.url(files[which])
        )
    assert "\n" not in str(info.value)
    # only downloads that passed every check stay (a valid ANN/NonLocal file of another
    # class count or head is kept for the config it fits)
    expected = [files[which]] if which in ("ade", "nonlocal") else []
    assert cached_files(cache) == expected


def test_unknown_names_and_unreachable_urls(served, cache, monkeypatch):
    server, _, _, _ = served
    with pytest.raises(ModelLoadError, match="did you mean ann_r101-d8_769x769_40k_cityscapes"):
        build_segmentor(f"ann_seg::{ANN}", checkpoint="ann_r101-d8_769x769_40k_cityscape")
    with pytest.raises(ModelLoadError, match="HTTP 404"):
        build_segmentor(f"ann_seg::{ANN}", checkpoint=server.url("missing-0123abcd.pth"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(ModelLoadError, match="not reachable"):
        build_segmentor(f"ann_seg::{ANN}", checkpoint=f"http://127.0.0.1:{closed}/x.pth")

    def no_network(*args, **kwargs):
        raise AssertionError("downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    psp = (
        "https://download.openmmlab.com/mmsegmentation/v0.5/pspnet/pspnet_r50-d8_512x1024_40k_"
        "cityscapes/pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth"
    )
    with pytest.raises(ModelLoadError, match="is an mmseg pspnet model"):
        build_segmentor(f"ann_seg::{ANN}", checkpoint=psp)
    assert cached_files(cache) == []


def test_index_lists_mmseg_figures_and_configs_that_exist():
    models = zoo.published_models()
    names = {m.name for m in models}
    assert len(models) == 24 and len(names) == 24
    for family in ("ann", "nonlocal"):
        for depth in (50, 101):
            for crop, iters in (("512x1024", "40k"), ("769x769", "80k")):
                assert f"{family}_r{depth}-d8_{crop}_{iters}_cityscapes" in names
            assert f"{family}_r{depth}-d8_512x512_160k_ade20k" in names
    entry = zoo.find_published("ann_r101-d8_769x769_40k_cityscapes")
    assert entry == zoo.find_published("ann_r101-d8_4xb2-40k_cityscapes-769x769")
    assert (entry.mIoU, entry.mIoU_ms_flip, entry.memory_gb, entry.fps) == (
        79.32,
        80.94,
        10.7,
        1.15,
    )
    assert entry.url.endswith("_20200530_025720-059bff28.pth") and zoo.hash_prefix(entry.url)
    for m in models:
        cfg = load_config(packaged_config(m.config))
        assert cfg.model.decode_head.num_classes == m.num_classes, m.name
        assert cfg.model.backbone.depth == int(m.backbone[2:-3]), m.name
        assert cfg.train_cfg.max_iters == m.iterations, m.name
        assert "x".join(map(str, cfg.crop_size)) == m.crop_size, m.name
        head = {"ann": "ANNSegHead", "nonlocal": "NLSegHead"}[m.family]
        assert cfg.model.decode_head.type == head, m.name


def run_cli(args, env, cwd):
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **env)
    return subprocess.run(
        [sys.executable, "-m", "ann_seg", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=600,
    )


def test_infer_by_name_is_the_whole_job(served, tmp_path):
    """``ann-seg infer CONFIG NAME photos/`` with an index whose entries point at the local
    server; a name of another class count is refused in one line and writes nothing."""
    server, files, reference, _ = served
    entry = zoo.find_published("ann_r50-d8_512x1024_40k_cityscapes")
    index = {"models": []}
    for name, which in (("ann_r50-d8_512x1024_40k_cityscapes", "ann"), ("ade_tiny", "ade")):
        row = dict(vars(entry), name=name, url=server.url(files[which]))
        index["models"].append(row)
    (tmp_path / "index.json").write_text(json.dumps(index))
    env = {"ANN_SEG_MODEL_INDEX": str(tmp_path / "index.json"), "TORCH_HOME": str(tmp_path / "th")}
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(photos / f"p{i}.png"), rng.integers(0, 255, (48, 64, 3), np.uint8))
    options = ["--cfg-options", *as_cli(ANN_OURS)]
    args = ["infer", f"ann_seg::{ANN}", "ann_r50-d8_512x1024_40k_cityscapes", str(photos)]
    proc = run_cli([*args, "--out-dir", "out", "--no-progress", *options], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "out" / "labels")) == ["p0.png.png", "p1.png.png"]
    assert os.listdir(tmp_path / "th" / "hub" / "checkpoints") == [files["ann"]]
    bad = ["infer", f"ann_seg::{ANN}", "ade_tiny", str(photos), "--out-dir", "bad", *options]
    proc = run_cli(bad, env, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "has 150 classes" in proc.stderr
    assert not (tmp_path / "bad").exists()
    models = run_cli(["models"], env, tmp_path)
    assert models.returncode == 0 and "| ade_tiny |" in models.stdout
    assert "| yes |" in models.stdout  # the cached one


def test_test_and_benchmark_inference_take_a_url(served, cityscapes_root, tmp_path):
    """``ann-seg test`` and ``ann-seg benchmark-inference`` with the served mmseg checkpoint's
    URL: downloaded once (the second tool hits the cache), converted, evaluated."""
    server, files, _, _ = served
    url = server.url(files["ann"])
    env = {"TORCH_HOME": str(tmp_path / "th")}
    options = as_cli(small_run_options(cityscapes_root))
    before = len(server.requests)
    proc = run_cli(
        ["test", f"ann_seg::{ANN}", url, "--work-dir", "w", "--cfg-options", *options],
        env,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mIoU" in proc.stdout + proc.stderr
    images = osp.join(cityscapes_root, "leftImg8bit", "val")
    bench = ["benchmark-inference", f"ann_seg::{ANN}", url, images, "--recursive"]
    bench += ["--modes", "fp32", "--max-images", "1", "--no-progress"]
    proc = run_cli([*bench, "--cfg-options", *as_cli(ANN_OURS)], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(server.requests) == before + 1  # one download for both tools
    proc = run_cli(["test", f"ann_seg::{ANN}", "ann_r50-d8_512x1024_40k_cityscape"], env, tmp_path)
    assert proc.returncode == 2 and "did you mean" in proc.stderr and "Traceback" not in proc.stderr
