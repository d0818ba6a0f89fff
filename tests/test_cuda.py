"""CUDA: every block and head in fp32/fp16/bf16 against float64 CPU references, folding,
training steps in fp16 (loss scaling) and bf16, folder inference with pinned memory, a
1-GPU dist-infer, and SDPA's fused kernel under fp16. Skipped without a GPU;
``scripts/gpu_check.sh`` runs them (``pytest -m cuda``) with the GPU benchmarks."""

import json
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmseg.registry import MODELS

from ann_seg.inference import LoaderOptions, run_inference
from ann_seg.layers import AFNB, APNB, CGNLBlock, NonLocalBlock, attend, fuse_for_inference
from ann_seg.mmseg import build_segmentor
from ann_seg.mmseg.speed import SpeedPolicy, apply_inference_speed

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
DEMO = "ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {"fp32": 1e-3, "fp16": 5e-3, "bf16": 3e-2}  # TF32 convolutions in fp32


def _randomized(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.eval()


def _blocks():
    x = torch.randn(2, 64, 17, 23, generator=torch.Generator().manual_seed(1))
    low = torch.randn(2, 32, 33, 45, generator=torch.Generator().manual_seed(2))
    return {
        "nl": (NonLocalBlock(64, 32), (x,)),
        "nl_dot": (NonLocalBlock(64, 32, mode="dot_product"), (x,)),
        "nl_concat": (NonLocalBlock(64, 32, mode="concatenation"), (x,)),
        "cgnl": (CGNLBlock(64, 32, groups=8), (x,)),
        "apnb": (APNB(64, 64, key_channels=32, value_channels=32), (x,)),
        "afnb": (AFNB(32, 64, 64, key_channels=32, value_channels=32), (low, x)),
    }


@pytest.mark.parametrize("precision", list(DTYPES))
@pytest.mark.parametrize("name", list(_blocks()))
def test_blocks_on_cuda_match_float64_cpu(name, precision):
    block, inputs = _blocks()[name]
    block = _randomized(block)
    with torch.no_grad():
        reference = block.double()(*(t.double() for t in inputs))
        dtype = DTYPES[precision]
        out = block.to("cuda", dtype)(*(t.to("cuda", dtype) for t in inputs))
    error = (out.double().cpu() - reference).norm() / reference.norm()
    assert torch.isfinite(out).all() and error < TOL[precision], error


HEADS = {
    "ANNSegHead": dict(in_channels=[32, 64], in_index=[0, 1], channels=32, key_channels=16),
    "APNBSegHead": dict(in_channels=64, in_index=1, channels=32, key_channels=16),
    "NLSegHead": dict(in_channels=64, in_index=1, channels=32),
    "CGNLSegHead": dict(in_channels=64, in_index=1, channels=32, groups=4),
}


@pytest.mark.parametrize("precision", list(DTYPES))
@pytest.mark.parametrize("name", list(HEADS))
def test_heads_on_cuda_match_float64_cpu(name, precision):
    head = MODELS.build(dict(type=name, num_classes=19, norm_cfg=dict(type="BN"), **HEADS[name]))
    head = _randomized(head)
    feats = [torch.randn(2, 32, 33, 45), torch.randn(2, 64, 17, 23)]
    with torch.no_grad():
        reference = head.double()([f.double() for f in feats])
        holder = torch.nn.Module()
        holder.decode_head = head.to("cuda", torch.float32)
        apply_inference_speed(holder, SpeedPolicy(precision=precision).resolve("cuda"))
        out = head([f.to("cuda", DTYPES[precision]) for f in feats])
    error = (out.double().cpu() - reference).norm() / reference.norm()
    assert out.dtype == torch.float32 and error < TOL[precision], error


def test_folding_on_cuda_keeps_the_logits():
    torch.manual_seed(0)
    model = _randomized(build_segmentor(DEMO, device="cuda"))
    images = torch.randn(2, 3, 128, 256, device="cuda")
    with torch.no_grad():
        plain = model(images, mode="tensor")
        fused = fuse_for_inference(model)(images, mode="tensor")
    assert ((fused - plain).norm() / plain.norm()).item() < 1e-3


def test_sdpa_picks_a_fused_kernel_under_fp16():
    """Our softmax attention, restricted to the flash kernel, runs: no float32 up-cast left."""
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415  (torch >= 2.3)

    q, k, v = (torch.randn(2, n, 64, device="cuda", dtype=torch.float16) for n in (4096, 110, 110))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = attend(q, k, v)
    reference = attend(q.double(), k.double(), v.double())
    assert out.dtype == torch.float16 and torch.allclose(out.double(), reference, atol=2e-3)


def _train(tmp_path, data_root, precision):
    work = tmp_path / precision
    loaders = ("train_dataloader", "val_dataloader", "test_dataloader")
    options = [f"{loader}.dataset.data_root={data_root}" for loader in loaders]
    options += [f"{loader}.batch_size=2" for loader in loaders]
    options += ["train_cfg.max_iters=4", "train_cfg.val_interval=4"]
    options += ["default_hooks.logger.interval=1", "default_hooks.checkpoint.interval=4"]
    options += ["param_scheduler.0.end=1", "param_scheduler.1.begin=1", "param_scheduler.1.end=4"]
    proc = subprocess.run(
        [sys.executable, "-m", "ann_seg", "train", DEMO, "--fast", "--precision", precision]
        + ["--work-dir", str(work), "--cfg-options", *options],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr, work


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_training_step_in_low_precision(precision, cityscapes_root, tmp_path):
    log, work = _train(tmp_path, cityscapes_root, precision)
    assert f"speed: {precision}+cl+fast" in log
    dumped = open(osp.join(work, osp.basename(DEMO.split("::")[1]))).read()
    assert "AmpOptimWrapper" in dumped
    assert ("'dynamic'" in dumped) == (precision == "fp16")  # loss scaling for fp16 only
    assert osp.isfile(work / "iter_4.pth") and " loss: nan" not in log


def test_folder_inference_pinned_and_one_gpu_dist_infer(cityscapes_root, tmp_path):
    images = osp.join(cityscapes_root, "leftImg8bit", "val")
    checkpoint = str(tmp_path / "random.pth")
    torch.manual_seed(0)
    torch.save({"state_dict": build_segmentor(DEMO).state_dict()}, checkpoint)
    pinned = run_inference(
        DEMO,
        checkpoint,
        images,
        str(tmp_path / "pinned"),
        loader=LoaderOptions(recursive=True, workers=1, batch_size=2),
        speed=SpeedPolicy.fast("infer"),
        progress=False,
    )
    assert pinned["counts"]["processed"] == 4 and pinned["device"].startswith("cuda")
    proc = subprocess.run(
        [sys.executable, "-m", "ann_seg", "dist-infer", DEMO, checkpoint, images, "1"]
        + ["--recursive", "--out-dir", str(tmp_path / "dist"), "--fast"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.load(open(tmp_path / "dist" / "summary.json"))
    assert summary["counts"]["processed"] == 4
