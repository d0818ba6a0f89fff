"""Small checkpoints shared by the inference, attention and ONNX tests.

Imported by module name (pyproject's pytest ``pythonpath`` lists ``tests/inference``), never
as ``tests``. The fixtures built on them are in ``conftest.py``.
"""

import os.path as osp

import torch
from _helpers import CONFIGS
from mmseg.apis import init_model

from ann_seg.mmseg.synthetic import synthetic_metainfo

DEMO_CONFIG = osp.join(CONFIGS, "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")

# The demo network at an eighth of the width, with slide inference in windows of 1500 x 2000:
# a 3000 x 4000 photo costs four windows.
TINY_SLIDE_CONFIG = f"""_base_ = {DEMO_CONFIG!r}
model = dict(
    backbone=dict(stem_channels=8, base_channels=8),
    decode_head=dict(in_channels=[32, 64], channels=16, key_channels=8),
    auxiliary_head=dict(in_channels=32, channels=8),
    test_cfg=dict(mode='slide', crop_size=(1500, 2000), stride=(1500, 2000)))
"""


def write_tiny_slide_config(directory) -> str:
    path = osp.join(str(directory), "tiny_slide.py")
    with open(path, "w") as f:
        f.write(TINY_SLIDE_CONFIG)
    return path


def make_checkpoint(config: str, path: str, scale: float = 0.3, seed: int = 0) -> str:
    """Random weights and BN statistics for ``config``'s model (the attention output convs are
    zero-initialised otherwise), saved with the synthetic set's classes and palette."""
    model = init_model(config, None, "cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    meta = synthetic_metainfo(4)
    torch.save(
        {
            "meta": {"dataset_meta": {"classes": meta["classes"], "palette": meta["palette"]}},
            "state_dict": model.state_dict(),
        },
        path,
    )
    return path
