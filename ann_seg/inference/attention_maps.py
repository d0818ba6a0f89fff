"""Where APNB and AFNB attend (``ann-seg visualize-attention``; method: docs/inference.md).

For a query pixel, a block's attention is a softmax over its S pyramid anchors, recomputed in
float64 from the block's own projections (forward hooks on ``attention.key_proj`` and
``attention.query_proj``; the blocks are not changed):
``w = softmax(scale * theta(x_q)[query] . P(phi(x_kv)))``, ``scale = key_channels ** -0.5``.
Each anchor's weight is spread uniformly over its bin region, ``m = P^T w`` on the key feature
grid (``P``: the pooling matrix, rows summing to 1), and each feature cell's mass is shared
equally by the image pixels it covers: a map sums to 1 over the image unless the input is
padded (``outside_mass``). The forward is a whole-image forward, also for slide-mode configs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.dataset import Compose

from ann_seg.io import ImageError, pyplot, read_image, save_figure
from ann_seg.layers import AFNB, APNB, PyramidPoolingSampler
from ann_seg.mmseg import build_segmentor
from ann_seg.mmseg.speed import default_device


@dataclass
class BlockAttention:
    """Attention of one block for each query point.

    ``anchor_weights`` (P, S): softmax weights over the anchors; ``maps`` (P, H, W): projected
    onto the image; ``level_maps`` (P, L, H, W): per pyramid level; ``level_bins``: the bins of
    each level; ``query_cells``: (row, col) of each point on the query feature grid;
    ``outside_mass`` (P,): weight on padded cells outside the image (0 without padding).
    """

    name: str
    module: str
    level_bins: List[Tuple[int, ...]]
    anchor_weights: np.ndarray
    maps: np.ndarray
    level_maps: np.ndarray
    query_cells: List[Tuple[int, int]]
    outside_mass: np.ndarray


def find_attention_blocks(model: torch.nn.Module) -> List[Tuple[str, torch.nn.Module]]:
    """``(module path, block)`` of every AFNB/APNB in forward order (AFNB first in ANN)."""
    return [
        (name, module) for name, module in model.named_modules() if isinstance(module, (AFNB, APNB))
    ]


def _record_projections(blocks, run) -> dict:
    """``run()`` with forward hooks that keep each block's key and query projection outputs:
    ``{(block name, 'key' or 'query'): output}``."""
    outputs, handles = {}, []

    def keep(key):
        def hook(_module, _inputs, output):
            outputs[key] = output.detach()

        return hook

    for name, block in blocks:
        for kind in ("key", "query"):
            projection = getattr(block.attention, f"{kind}_proj")
            if projection is not None:
                handles.append(projection.register_forward_hook(keep((name, kind))))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _cells(length: int, resized: int, padded: int, cells: int) -> np.ndarray:
    """Feature cell of each of ``length`` image pixels (centres mapped through the resize to
    ``resized`` and onto ``cells`` cells spanning the ``padded`` network input)."""
    centres = (np.arange(length) + 0.5) * (resized / length)
    return np.minimum((centres * cells / padded).astype(np.int64), cells - 1)


def _to_image(cell_map: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Share each cell's mass equally among its pixels: (..., hk, wk) -> (..., H, W)."""
    hk, wk = cell_map.shape[-2:]
    per_pixel = cell_map / np.maximum(
        np.outer(np.bincount(rows, minlength=hk), np.bincount(cols, minlength=wk)), 1
    )
    return per_pixel[..., rows[:, None], cols[None, :]]


def _preprocess(model, image_bgr: np.ndarray):
    """Test pipeline (image given as an array) and data preprocessor, as ``inference_model``."""
    pipeline = [dict(t) for t in model.cfg.test_pipeline if t["type"] != "LoadAnnotations"]
    pipeline[0] = dict(type="LoadImageFromNDArray")
    sample = Compose(pipeline)(dict(img=image_bgr))
    data = model.data_preprocessor(
        {"inputs": [sample["inputs"]], "data_samples": [sample["data_samples"]]}, False
    )
    return data["inputs"], data["data_samples"][0].metainfo


def compute_attention_maps(
    model: torch.nn.Module, image_bgr: np.ndarray, points: Sequence[Tuple[int, int]]
) -> List[BlockAttention]:
    """Attention maps of every AFNB/APNB of ``model`` for query ``points`` ((x, y) pixel
    coordinates of ``image_bgr``, a BGR ``uint8`` image)."""
    height, width = image_bgr.shape[:2]
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"point ({x}, {y}) is outside the {width}x{height} image")
    blocks = find_attention_blocks(model)
    if not blocks:
        raise ValueError("the model has no APNB/AFNB block")
    for name, block in blocks:
        attention = block.attention
        if not isinstance(attention.sampler, PyramidPoolingSampler) or attention.dims != 2:
            raise ValueError(f"{name}: attention maps need 2-d pyramid-pooling anchors")
        if attention.pairwise != "softmax":
            raise ValueError(f"{name}: attention maps need softmax attention")
    inputs, meta = _preprocess(model, image_bgr)
    resized_h, resized_w = meta["img_shape"][:2]
    padded_h, padded_w = inputs.shape[2:]
    with torch.no_grad():
        outputs = _record_projections(blocks, lambda: model(inputs, mode="tensor"))
    counts = Counter(type(block).__name__ for _, block in blocks)
    results = []
    for name, block in blocks:
        attention = block.attention
        key_map = outputs[(name, "key")][0].double()  # (C', hk, wk)
        query_map = outputs.get((name, "query"))
        query_map = key_map if query_map is None else query_map[0].double()  # (C', hq, wq)
        hk, wk = key_map.shape[1:]
        hq, wq = query_map.shape[1:]
        pool = attention.sampler.pooling_matrix((hk, wk), torch.float64, "cpu")  # (S, N)
        anchors = key_map.cpu().flatten(1) @ pool.t()  # (C', S)
        scale = attention.scale if attention.scale is not None else attention.key_channels**-0.5
        q_rows = _cells(height, resized_h, padded_h, hq)
        q_cols = _cells(width, resized_w, padded_w, wq)
        cells = [(int(q_rows[y]), int(q_cols[x])) for x, y in points]
        queries = torch.stack([query_map[:, r, c].cpu() for r, c in cells])  # (P, C')
        weights = torch.softmax(scale * queries @ anchors, dim=-1)  # (P, S)
        bins = list(attention.sampler.level_bins(2))
        sizes = [int(np.prod(b)) for b in bins]
        level_cells = torch.stack(
            [w @ p for w, p in zip(weights.split(sizes, -1), pool.split(sizes, 0))], 1
        )
        level_cells = level_cells.reshape(len(points), len(bins), hk, wk).numpy()
        k_rows = _cells(height, resized_h, padded_h, hk)
        k_cols = _cells(width, resized_w, padded_w, wk)
        level_maps = _to_image(level_cells, k_rows, k_cols)
        maps = level_maps.sum(1)
        label = type(block).__name__
        results.append(
            BlockAttention(
                name=label if counts[label] == 1 else f"{label} ({name})",
                module=name,
                level_bins=bins,
                anchor_weights=weights.numpy(),
                maps=maps,
                level_maps=level_maps,
                query_cells=cells,
                outside_mass=1.0 - maps.sum(axis=(1, 2)),
            )
        )
    return results


COLORBAR_LABEL = "attention per pixel (map sums to 1)"


def attention_figure(
    image_rgb: np.ndarray,
    points: Sequence[Tuple[int, int]],
    blocks: Sequence[BlockAttention],
    levels: bool = False,
    panel_inches: float = 2.6,
):
    """A matplotlib figure: one row per point, one column per block (plus one per pyramid
    level with ``levels``); heat maps over the image with their colour bars (attention weight
    per image pixel, from 0 to the panel's maximum), the query point marked."""
    plt = pyplot()
    columns = [
        (block, level)
        for block in blocks
        for level in (None, *range(len(block.level_bins) if levels else 0))
    ]
    height, width = image_rgb.shape[:2]
    size = ((panel_inches + 0.6) * len(columns), panel_inches * height / width * len(points) + 0.5)
    figure, axes = plt.subplots(len(points), len(columns), squeeze=False, figsize=size)
    for row, (x, y) in enumerate(points):
        for col, (block, level) in enumerate(columns):
            ax = axes[row, col]
            heat = block.maps[row] if level is None else block.level_maps[row, level]
            ax.imshow(image_rgb)
            shown = ax.imshow(
                heat, cmap="inferno", alpha=0.65, vmin=0.0, vmax=max(heat.max(), 1e-12)
            )
            bar = figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=6)
            bar.ax.yaxis.get_offset_text().set_fontsize(6)
            if col == len(columns) - 1:
                bar.set_label(COLORBAR_LABEL, fontsize=6)
            ax.plot([x], [y], marker="+", color="cyan", markersize=12, markeredgewidth=2)
            if level is None:
                title = f"{block.name} @ ({x}, {y})"
            else:
                bins = "x".join(map(str, block.level_bins[level]))
                title = f"{block.name} {bins}: {heat.sum():.0%}"
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    figure.tight_layout()
    return figure


def visualize_attention(
    config,
    checkpoint: str,
    image_path: str,
    points: Sequence[Tuple[int, int]],
    out_file: str = "attention.png",
    device: Optional[str] = None,
    levels: bool = False,
    cfg_options: Optional[dict] = None,
) -> List[BlockAttention]:
    """Compute the attention maps of ``points`` on ``image_path`` and write the figure to
    ``out_file`` (atomically; PNG, or the format its extension names). The image is decoded
    as in ``ann-seg infer``."""
    if not points:
        raise ValueError("give at least one query point")
    model = build_segmentor(
        config, device=device or default_device(), cfg_options=cfg_options, checkpoint=checkpoint
    )
    try:
        image_bgr, _ = read_image(image_path)
    except ImageError as error:
        raise ImageError(f"{image_path}: {error}") from None
    blocks = compute_attention_maps(model, image_bgr, points)
    figure = attention_figure(image_bgr[..., ::-1], points, blocks, levels=levels)
    try:
        save_figure(figure, out_file, dpi=100)  # the format from the extension
    finally:
        pyplot().close(figure)
    return blocks
