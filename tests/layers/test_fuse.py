"""Every optimised inference path computes what the plain path computes."""

import os.path as osp

import pytest
import torch
from _helpers import CONFIGS, randomize_
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from ann_seg.layers import (
    AFNB,
    APNB,
    CGNLBlock,
    NonLocalBlock,
    fold_batch_norms,
    fuse_for_inference,
)
from ann_seg.mmseg import load_config


def build(config, **options):
    register_all_modules()
    cfg = load_config(config, dict({"model.pretrained": None}, **options))
    return randomize_(MODELS.build(cfg.model), std=0.1, mean_std=0.1).eval()


SMALL = {
    "model.backbone.depth": 18,
    "model.backbone.norm_cfg.type": "BN",
    "model.decode_head.norm_cfg.type": "BN",
    "model.auxiliary_head.norm_cfg.type": "BN",
    "model.auxiliary_head.in_channels": 256,
    "model.auxiliary_head.channels": 32,
}
CASES = {
    "ann": (
        "ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py",
        {
            "model.decode_head.in_channels": [256, 512],
            "model.decode_head.channels": 64,
            "model.decode_head.key_channels": 32,
        },
    ),
    "ann_add_keyvalue": (
        "ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py",
        {
            "model.decode_head.in_channels": [256, 512],
            "model.decode_head.channels": 64,
            "model.decode_head.key_channels": 32,
            "model.decode_head.fusion": "add",
            "model.decode_head.share": "key_value",
        },
    ),
    "nonlocal": (
        "nonlocal/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py",
        {"model.decode_head.in_channels": 512, "model.decode_head.channels": 64},
    ),
    "cgnl": (
        "cgnl/cgnl_r50-d8_4xb2-40k_cityscapes-512x1024.py",
        {"model.decode_head.in_channels": 512, "model.decode_head.channels": 64},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_model_matches_plain(case, channels_last):
    config, options = CASES[case]
    model = build(osp.join(CONFIGS, config), **SMALL, **options)
    images = torch.randn(2, 3, 67, 91, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images, mode="tensor")
        fuse_for_inference(model, channels_last=channels_last)
        got = model(
            images.contiguous(memory_format=torch.channels_last) if channels_last else images,
            mode="tensor",
        )
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-4, rel
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not norms, f"{len(norms)} BatchNorms left unfolded"


def test_folding_removes_attention_output_and_refuses_training():
    block = APNB(32, 32, 16)
    with pytest.raises(RuntimeError, match="eval"):
        block.fold_()
    with pytest.raises(RuntimeError, match="eval"):
        fold_batch_norms(block)
    fuse_for_inference(block)
    # the merged map reads O (value: 16 channels) and X (32) instead of W_o(O) (32) and X
    assert block.fuse.context_weight.shape == (32, 16)
    assert block.fuse.input_weight.shape == (32, 32)
    assert block.attention.out_proj is None


def _block(kind, fusion, dims):
    torch.manual_seed(0)
    if kind == "apnb":
        block = APNB(24, 20, 8, value_channels=12, fusion=fusion, pool_sizes=(1, 2, 3), dims=dims)
    else:
        block = AFNB(
            16,
            24,
            24 if fusion == "add" else 20,
            8,
            value_channels=12,
            fusion=fusion,
            pool_sizes=(1, 2, 3),
            dims=dims,
        )
    return randomize_(block, std=0.2, mean_std=0.2).eval()


@pytest.mark.parametrize("kind", ["apnb", "afnb"])
@pytest.mark.parametrize("fusion", ["concat", "add"])
@pytest.mark.parametrize(
    "dims,spatial,layout",
    [
        (1, (13,), None),
        (2, (7, 9), None),
        (2, (7, 9), torch.channels_last),
        (2, (1, 1), None),
        (3, (3, 4, 5), None),
        (3, (3, 4, 5), torch.channels_last_3d),
    ],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_folded_block_matches_plain(kind, fusion, dims, spatial, layout, batch):
    block = _block(kind, fusion, dims)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 24, *spatial, generator=gen)
    args = (x,) if kind == "apnb" else (torch.randn(batch, 16, *spatial, generator=gen), x)
    with torch.no_grad():
        expected = block(*args)
        block.fold_()
        if layout is not None:
            args = tuple(a.contiguous(memory_format=layout) for a in args)
        got = block(*args)
    assert got.shape == expected.shape
    if layout is not None and min(spatial) > 1:
        assert got.is_contiguous(memory_format=layout)  # the GEMM writes channels-last
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_folded_block_under_bf16_autocast():
    block = _block("apnb", "concat", 2)
    x = torch.randn(2, 24, 9, 11, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = block(x)
        block.fold_()
        for layout in (torch.contiguous_format, torch.channels_last):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = block(x.contiguous(memory_format=layout))
            assert got.dtype == torch.bfloat16
            rel = ((got.float() - expected).norm() / expected.norm()).item()
            assert rel < 2e-2, rel


def _family():
    yield "apnb", APNB(24, 20, 8, pool_sizes=(1, 2, 3)), 1
    yield "afnb", AFNB(16, 24, 20, 8, pool_sizes=(1, 2, 3)), 2
    for mode in ("gaussian", "embedded_gaussian", "dot_product", "concatenation"):
        yield f"nl_{mode}", NonLocalBlock(24, 8, mode=mode), 1
    yield "cgnl", CGNLBlock(24, 8, groups=2), 1


@pytest.mark.parametrize(
    "name,folded", [(name, False) for name, _, _ in _family()] + [("apnb", True), ("afnb", True)]
)
def test_blocks_compile_in_one_graph(name, folded):
    """torch.compile captures every block whole (fullgraph: no graph break), plain and
    folded, and the captured graph computes what eager mode computes."""
    _, block, inputs = next(item for item in _family() if item[0] == name)
    block = randomize_(block, std=0.2, mean_std=0.2)
    gen = torch.Generator().manual_seed(4)
    args = [torch.randn(2, 16, 7, 9, generator=gen)] if inputs == 2 else []
    args.append(torch.randn(2, 24, 7, 9, generator=gen))
    if folded:
        block.fold_()
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), block(*args), rtol=1e-5, atol=1e-6)
