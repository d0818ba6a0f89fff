"""Constants and helpers shared by the tests: config overrides for small models and short runs,
tools run in a fresh interpreter, one-thread torch, random weights.

Imported by module name (``from _helpers import ...``): pyproject's pytest ``pythonpath`` puts
``tests/`` on ``sys.path``. The mmseg wheel installs a top-level package named ``tests``; nothing
here imports ``tests``. Fixtures live in the ``conftest.py`` files.
"""

import contextlib
import importlib
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import torch

from ann_seg.mmseg.config import CONFIG_ROOT

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = CONFIG_ROOT  # the packaged configs (the repository's configs/ links there)
IMAGE_SIZE = (64, 128)


def small_model_options(head_channels=32, key_channels=16):
    """A ResNet-18-D8 and a narrow head in place of the config's ResNet-50/101 (no download)."""
    return {
        "model.pretrained": None,
        "model.backbone.depth": 18,
        "model.backbone.norm_cfg.type": "BN",
        "model.decode_head.in_channels": [256, 512],
        "model.decode_head.channels": head_channels,
        "model.decode_head.key_channels": key_channels,
        "model.decode_head.norm_cfg.type": "BN",
        "model.auxiliary_head.in_channels": 256,
        "model.auxiliary_head.channels": 16,
        "model.auxiliary_head.norm_cfg.type": "BN",
    }


def small_run_options(data_root, max_iters=2, checkpoint_interval=2, layout="cityscapes"):
    """Shrink a real Cityscapes/ADE20K config's data pipeline and schedule to seconds."""
    h, w = IMAGE_SIZE
    options = {
        "model.data_preprocessor.size": (h, w),
        "train_cfg.max_iters": max_iters,
        "train_cfg.val_interval": max_iters,
        "default_hooks.checkpoint.interval": checkpoint_interval,
        "default_hooks.logger.interval": 1,
        "train_dataloader.dataset.pipeline.2.scale": (2 * w, 2 * h),
        "train_dataloader.dataset.pipeline.3.crop_size": (h, w),
        "val_dataloader.dataset.pipeline.1.scale": (w, h),
        "test_dataloader.dataset.pipeline.1.scale": (w, h),
    }
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        options.update(
            {
                f"{loader}.batch_size": 2,
                f"{loader}.num_workers": 0,
                f"{loader}.persistent_workers": False,
                f"{loader}.dataset.data_root": data_root,
            }
        )
    options.update(small_model_options())
    if layout == "ade20k":
        options.update(
            {"model.decode_head.num_classes": 150, "model.auxiliary_head.num_classes": 150}
        )
    return options


def as_cli(options):
    """``--cfg-options`` arguments for mmengine's DictAction."""

    def fmt(value):
        if value is None:
            return "None"
        if isinstance(value, (list, tuple)):
            inner = ",".join(fmt(v) for v in value)
            return f"[{inner}]" if isinstance(value, list) else f"({inner})"
        return str(value)

    return [f"{key}={fmt(value)}" for key, value in options.items()]


def tiny_demo_options(data_root, max_iters=2):
    """The demo config in seconds: ``max_iters`` iterations, one validation and checkpoint at
    the end, loss logged every iteration, 2-image batches without loader workers."""
    options = {
        "train_cfg.max_iters": max_iters,
        "train_cfg.val_interval": max_iters,
        "default_hooks.checkpoint.interval": max_iters,
        "default_hooks.logger.interval": 1,
        "param_scheduler.0.end": 1,
        "param_scheduler.1.begin": 1,
        "param_scheduler.1.end": max_iters,
    }
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        options.update(
            {
                f"{loader}.batch_size": 2,
                f"{loader}.num_workers": 0,
                f"{loader}.persistent_workers": False,
                f"{loader}.dataset.data_root": data_root,
            }
        )
    return options


def load_tool(name: str):
    """``ann_seg.tools.<name>`` (its ``main(argv)`` runs in-process)."""
    return importlib.import_module(f"ann_seg.tools.{name}")


def run_tool(args, cwd, timeout=600, env=None):
    """Run a Python tool in a fresh interpreter; returns the CompletedProcess (text)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: on this 2-core machine two threads are several times slower for
    small models whenever another process is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def randomize_(module, seed: int = 0, std: float = 0.5, mean_std: float = 0.3):
    """Random parameters (zero-inits would hide errors) and BN running statistics; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * mean_std)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module.eval()


# Test videos: frame ``i`` is ``pattern_frame(i)``; ``frame_index`` recovers ``i % 256`` from a
# decoded frame, lossy codecs included.
BLOCK = 16  # index bits as 16x16 blocks: macroblock-aligned, they survive MPEG-4 compression
FOURCC = {".mp4": "mp4v", ".avi": "FFV1", ".mkv": "FFV1"}  # mp4v lossy, FFV1 lossless


def pattern_frame(index: int, height: int = 96, width: int = 160) -> np.ndarray:
    """BGR uint8 (height, width, 3): gradients moving with ``index``, and in the top
    ``BLOCK`` rows the 8 bits of ``index % 256`` as dark/light blocks (width >= 128)."""
    y, x = np.mgrid[:height, :width]
    frame = np.stack(
        [(x * 3 + index * 5) % 256, (y * 2 + index) % 256, (x + y + index * 11) % 256], -1
    ).astype(np.uint8)
    for bit in range(8):
        frame[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 224 if (index >> bit) & 1 else 32
    return frame


def frame_index(frame: np.ndarray) -> int:
    """``index % 256`` read back from a (possibly lossy) decoded ``pattern_frame``."""
    blocks = [frame[2 : BLOCK - 2, b * BLOCK + 2 : (b + 1) * BLOCK - 2].mean() for b in range(8)]
    return sum(1 << bit for bit, mean in enumerate(blocks) if mean > 128)


def make_video(path, frames: int, fps: float = 10.0, height: int = 96, width: int = 160):
    """Write ``pattern_frame(0..frames-1)`` with OpenCV: mp4v for .mp4, FFV1 for .avi/.mkv."""
    path = str(path)
    fourcc = cv2.VideoWriter_fourcc(*FOURCC[os.path.splitext(path)[1]])
    writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, fourcc, fps, (width, height))
    assert writer.isOpened(), path
    for i in range(frames):
        writer.write(pattern_frame(i, height, width))
    writer.release()
    return path


def truncate(path, fraction: float) -> int:
    """Cut ``path`` to ``fraction`` of its size (a corrupt tail); returns the new size."""
    size = int(os.path.getsize(path) * fraction)
    os.truncate(path, size)
    return size
