"""tools/visualize_attention.py and ann_seg.apis.attention_maps."""

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from _helpers import load_tool
from _inference_helpers import DEMO_CONFIG

from ann_seg.inference.attention_maps import (
    COLORBAR_LABEL,
    attention_figure,
    compute_attention_maps,
    find_attention_blocks,
)
from ann_seg.mmseg import build_segmentor
from ann_seg.mmseg.synthetic import render_long_range_sample
from ann_seg.tools import cli

pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def model(demo_checkpoint):
    return build_segmentor(DEMO_CONFIG, checkpoint=demo_checkpoint)


def astronaut_bgr(height=88, width=120):
    return cv2.resize(
        skimage.data.astronaut()[..., ::-1], (width, height), interpolation=cv2.INTER_AREA
    )


def synthetic_bgr():
    return np.ascontiguousarray(render_long_range_sample(0, "val", 0, (64, 128)).image[..., ::-1])


@pytest.mark.parametrize(
    "make_image, points",
    [
        (astronaut_bgr, [(0, 0), (119, 87), (60, 30)]),  # 11 x 15 features: bins don't divide
        (synthetic_bgr, [(5, 2), (100, 50)]),
    ],
)
def test_projected_maps_sum_to_one_and_match_the_blocks(model, make_image, points):
    image = make_image()
    captured = {}
    hooks = []
    for name, block in find_attention_blocks(model):
        attention = block.attention
        hooks.append(
            attention.register_forward_pre_hook(
                lambda _m, args, name=name: captured.__setitem__((name, "in"), args)
            )
        )
        hooks.append(
            attention.out_proj.register_forward_pre_hook(
                lambda _m, args, name=name: captured.__setitem__((name, "context"), args[0])
            )
        )
    try:
        blocks = compute_attention_maps(model, image, points)
    finally:
        for hook in hooks:
            hook.remove()
    assert [b.name for b in blocks] == ["AFNB", "APNB"]
    for block in blocks:
        assert block.anchor_weights.shape == (len(points), 110)
        np.testing.assert_allclose(block.anchor_weights.sum(1), 1, atol=1e-12)
        assert block.maps.shape == (len(points), *image.shape[:2])
        assert (block.maps >= 0).all()
        np.testing.assert_allclose(block.maps.sum(axis=(1, 2)), 1, atol=1e-9)
        np.testing.assert_allclose(block.level_maps.sum(1), block.maps, atol=1e-12)
        level_sizes = [int(np.prod(b)) for b in block.level_bins]
        level_mass = [
            w.sum(1) for w in np.split(block.anchor_weights, np.cumsum(level_sizes)[:-1], axis=1)
        ]
        np.testing.assert_allclose(
            block.level_maps.sum(axis=(2, 3)), np.stack(level_mass, 1), atol=1e-9
        )
        np.testing.assert_allclose(block.outside_mass, 0, atol=1e-9)
        # the recomputed weights reproduce the block's own attention output at the query
        attention = dict(find_attention_blocks(model))[block.module].attention
        args = captured[(block.module, "in")]
        x_kv = args[1] if len(args) > 1 and args[1] is not None else args[0]
        with torch.no_grad():
            key_anchors = attention.sampler(attention.key_proj(x_kv))
            values = (
                key_anchors
                if attention.value_proj is None
                else attention.value_proj(attention._as_nd(attention.sampler(x_kv))).flatten(2)
            )
        context = captured[(block.module, "context")][0]
        for point, (row, col) in enumerate(block.query_cells):
            expected = values[0].double() @ torch.from_numpy(block.anchor_weights[point])
            torch.testing.assert_close(
                context[:, row, col].double(), expected, atol=1e-4, rtol=1e-4
            )


def test_query_point_maps_to_its_feature_cell(model):
    blocks = compute_attention_maps(model, astronaut_bgr(), [(0, 0), (119, 87), (8, 16)])
    assert blocks[1].query_cells == [(0, 0), (10, 14), (2, 1)]  # 88 x 120 -> 11 x 15, stride 8
    with pytest.raises(ValueError, match="outside"):
        compute_attention_maps(model, astronaut_bgr(), [(120, 0)])


@pytest.mark.parametrize("levels, panels", [(False, 2), (True, 2 + 2 * 4)])
def test_every_panel_has_a_colour_bar_of_its_own_range(model, levels, panels):
    import matplotlib.pyplot as plt  # noqa: PLC0415  (pyplot once ann_seg chose the Agg backend)

    points = [(5, 2), (100, 50)]
    image = synthetic_bgr()
    blocks = compute_attention_maps(model, image, points)
    figure = attention_figure(image[..., ::-1], points, blocks, levels=levels)
    try:
        images = [ax for ax in figure.axes if ax.images]
        bars = [ax for ax in figure.axes if not ax.images]
        assert len(images) == len(bars) == panels * len(points)
        # each colour bar spans 0 .. the maximum of its own panel's heat map
        for ax in images:
            heat = ax.images[1]
            assert heat.norm.vmin == 0.0
            assert heat.norm.vmax == pytest.approx(float(heat.get_array().max()))
            assert heat.colorbar is not None and heat.colorbar.vmax == heat.norm.vmax
        labels = [bar.get_ylabel() for bar in bars]
        assert labels.count(COLORBAR_LABEL) == len(points)  # the last column of each row
    finally:
        plt.close(figure)


def test_tool_writes_png(tmp_path, demo_checkpoint, capsys):
    image = tmp_path / "coffee.jpg"
    cv2.imwrite(str(image), skimage.data.coffee()[::4, ::4, ::-1])  # 100 x 150 photo
    out = tmp_path / "maps" / "attention.png"
    tool = load_tool("visualize_attention")
    assert (
        tool.main(
            [
                DEMO_CONFIG,
                demo_checkpoint,
                str(image),
                "--points",
                "10,20",
                "140,90",
                "--out",
                str(out),
                "--levels",
            ]
        )
        == 0
    )
    assert "AFNB, APNB" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = cv2.imread(str(out))
    assert figure.shape[1] > figure.shape[0] > 100  # 2 rows x 10 columns
    assert (
        cli.run(
            tool.main,
            [
                DEMO_CONFIG,
                demo_checkpoint,
                str(tmp_path / "missing.png"),
                "--points",
                "1,1",
                "--out",
                str(tmp_path / "x.png"),
            ],
        )
        == 2
    )
    assert "file not found" in capsys.readouterr().err
