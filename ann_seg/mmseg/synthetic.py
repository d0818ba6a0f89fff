"""A synthetic segmentation data set that can only be solved with long-range context
(docs/datasets.md, "The built-in synthetic set").

Every ``H x W`` image has a cue band, rows ``[0, cue_rows)`` with ``cue_rows = max(2,
round(H / 16))``, of one saturated colour whose hue (``(k - 1) / K``, jittered by up to +-20 %
of the spacing) picks the image's class ``k`` in ``1..K``; and two to five grey striped objects
(discs, rotated rectangles, blobs), drawn whatever the class, in rows ``>= min_object_row =
cue_rows + ceil(cue_distance * H)``, all labelled ``k``. Everything else, the band included,
is background (0); 255 is never written. Every object pixel is at least ``min_cue_distance =
ceil(cue_distance * H) + 1`` pixels from every cue pixel. A per-image colour gain (+-5 %) and
per-pixel noise (sigma 0.03) keep exact colours from leaking from the band.

Each image comes from its own ``numpy`` Generator seeded with ``(seed, split, index)``:
byte-identical for equal parameters, independent of the other split's size and of the layout
(Cityscapes' or ADE20K's, ``_sample_paths``; ADE20K images are JPEG, quality 95). A manifest
in the root records the parameters; generating again the same set is a no-op. With
``K <= 18`` the Cityscapes layout also holds what Cityscapes ships: ``*_gtFine_polygons.json``
(drawn by cityscapesScripts' ``json2labelImg`` into exactly the label map),
``*_gtFine_labelIds.png`` and ``*_gtFine_instanceIds.png``.
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import math
import os
import sys
from typing import Any, NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ann_seg.io import Progress, atomic_write_bytes, atomic_write_text

from .cityscapes import INSTANCE_IDS, LABELS, NUM_TRAIN_IDS, train_id_to_id_lut

CUE_BAND_FRACTION = 1 / 16
MIN_CUE_DISTANCE_FRACTION = 0.4
MIN_SIZE = 32
MIN_OBJECT_ROWS = 8  # the smallest object is a disc of radius 3
MANIFEST_NAME = "ann_seg_synthetic.json"
LAYOUTS = ("cityscapes", "ade20k")
SPLITS = ("train", "val")

_GENERATOR_ID = "ann_seg.datasets.synthetic"
_GENERATOR_VERSION = 1
_SPLIT_SEED_CODES = {"train": 0, "val": 1}
_CITYSCAPES_CITIES = {"train": ("farfield", "longreach"), "val": ("distantvale", "remoteford")}
_ADE_SPLIT_DIRS = {"train": "training", "val": "validation"}
_CUE_SATURATION, _CUE_VALUE = 0.85, 0.9
_NOISE_SIGMA = 0.03
_JPEG_QUALITY = 95


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(value) for value in size)
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(size)}")
    return height, width


def _check_num_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= 254:  # ADE20K annotations store class + 1 in uint8, 255 = ignore
        raise ValueError(f"num_classes must be in 1..254, got {num_classes}")


def _cue_rgb(hue: float, saturation: float, value: float) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(hue % 1.0, saturation, value)


def synthetic_metainfo(num_classes: int = 4) -> dict[str, tuple]:
    """Class names and palette (mmseg ``METAINFO`` style) for ``num_classes`` object classes:
    object class ``k`` has the nominal colour of its cue band, background is black."""
    _check_num_classes(num_classes)
    names, palette = ["background"], [(0, 0, 0)]
    for k in range(1, num_classes + 1):
        names.append(f"class_{chr(ord('a') + k - 1)}" if k <= 26 else f"class_{k}")
        rgb = _cue_rgb((k - 1) / num_classes, _CUE_SATURATION, _CUE_VALUE)
        palette.append(tuple(round(255 * c) for c in rgb))
    return {"classes": tuple(names), "palette": tuple(palette)}


SYNTHETIC_CLASSES = synthetic_metainfo(4)["classes"]
SYNTHETIC_PALETTE = synthetic_metainfo(4)["palette"]


class LongRangeGeometry(NamedTuple):
    """Where the cue and the objects may lie in an image of a given height."""

    cue_rows: int  # the cue band covers rows [0, cue_rows)
    min_object_row: int  # objects only cover rows >= min_object_row
    min_cue_distance: int  # smallest distance between an object pixel and a cue pixel


def long_range_geometry(
    size: tuple[int, int], cue_distance: float = MIN_CUE_DISTANCE_FRACTION
) -> LongRangeGeometry:
    """Cue band height and the minimum object row/distance for an image of ``size = (H, W)``
    whose objects keep at least ``cue_distance * H`` rows below the cue band."""
    height, _ = _check_size(size)
    if not 0 < cue_distance < 1:
        raise ValueError(
            f"cue_distance must be a fraction of the height in (0, 1), got {cue_distance!r}"
        )
    cue_rows = max(2, round(height * CUE_BAND_FRACTION))
    min_object_row = cue_rows + math.ceil(cue_distance * height)
    if height - min_object_row < MIN_OBJECT_ROWS:
        raise ValueError(
            f"cue_distance {cue_distance!r} leaves {height - min_object_row} rows for the objects "
            f"at height {height}; need at least {MIN_OBJECT_ROWS}"
        )
    return LongRangeGeometry(cue_rows, min_object_row, min_object_row - (cue_rows - 1))


class SyntheticSample(NamedTuple):
    """One rendered sample: RGB ``uint8`` image, ``uint8`` train-id label and its cue class."""

    image: np.ndarray
    label: np.ndarray
    cue_class: int


def render_long_range_sample(
    seed: int,
    split: str,
    index: int,
    size: tuple[int, int] = (128, 256),
    num_classes: int = 4,
    cue_distance: float = MIN_CUE_DISTANCE_FRACTION,
) -> SyntheticSample:
    """Render sample ``index`` of ``split`` exactly as :func:`generate_long_range_dataset` does."""
    height, width = _check_size(size)
    _check_num_classes(num_classes)
    if split not in _SPLIT_SEED_CODES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    geometry = long_range_geometry(size, cue_distance)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_SEED_CODES[split], index]))
    cue_class = int(rng.integers(1, num_classes + 1))

    coarse = rng.standard_normal((max(2, height // 16), max(2, width // 16)), dtype=np.float32)
    intensity = rng.uniform(0.15, 0.35) + 0.05 * cv2.resize(
        coarse, (width, height), interpolation=cv2.INTER_CUBIC
    )
    label = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        mask = _random_object_mask(rng, geometry, height, width)
        angle, amplitude = rng.uniform(0.0, np.pi), rng.uniform(0.03, 0.1)
        period, phase = rng.uniform(3.0, 8.0), rng.uniform(0.0, 2 * np.pi)
        brightness = rng.uniform(0.55, 0.8)
        left, top, box_width, box_height = cv2.boundingRect(mask.astype(np.uint8))
        box = (slice(top, top + box_height), slice(left, left + box_width))
        rows, cols = np.mgrid[box].astype(np.float32)
        stripes = amplitude * np.sin(
            2 * np.pi * (cols * np.cos(angle) + rows * np.sin(angle)) / period + phase
        )
        intensity[box][mask[box]] = (brightness + stripes)[mask[box]]
        label[mask] = cue_class

    image = np.repeat(intensity[..., None], 3, axis=2)
    spacing = 1.0 / num_classes
    hue = (cue_class - 1) * spacing + rng.uniform(-0.2, 0.2) * spacing
    image[: geometry.cue_rows] = _cue_rgb(hue, rng.uniform(0.7, 0.95), rng.uniform(0.75, 0.95))
    image = image * rng.uniform(0.95, 1.05, size=3).astype(np.float32)
    image += _NOISE_SIGMA * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return SyntheticSample(image, label, cue_class)


def _random_object_mask(
    rng: np.random.Generator, geometry: LongRangeGeometry, height: int, width: int
) -> np.ndarray:
    """A disc, rotated rectangle or blob fitting in a circle that lies in the object region."""
    region = min(height - geometry.min_object_row, width)
    max_radius = max(3, int(0.3 * region))
    radius = int(rng.integers(max(3, round(0.12 * region)), max_radius + 1))
    center_row = int(rng.integers(geometry.min_object_row + radius, height - radius))
    center_col = int(rng.integers(radius, width - radius))
    mask = np.zeros((height, width), np.uint8)
    kind = int(rng.integers(3))
    if kind == 0:
        cv2.circle(mask, (center_col, center_row), radius, 1, thickness=-1)
    elif kind == 1:
        diagonal_angle = rng.uniform(np.radians(20), np.radians(70))
        half_diagonal = radius - 1  # rounding the corners may add up to one pixel
        box = (
            (center_col, center_row),
            (
                2 * half_diagonal * np.cos(diagonal_angle),
                2 * half_diagonal * np.sin(diagonal_angle),
            ),
            rng.uniform(0.0, 180.0),
        )
        cv2.fillPoly(mask, [np.rint(cv2.boxPoints(box)).astype(np.int32)], 1)
    else:
        for _ in range(int(rng.integers(3, 6))):
            part_radius = max(2, int(rng.uniform(0.35, 0.55) * radius))
            offset, direction = rng.uniform(0, radius - part_radius), rng.uniform(0, 2 * np.pi)
            part_center = (
                round(center_col + offset * np.cos(direction)),
                round(center_row + offset * np.sin(direction)),
            )
            cv2.circle(mask, part_center, part_radius, 1, thickness=-1)
    mask[: geometry.min_object_row] = 0  # a no-op by construction; keeps the distance guaranteed
    return mask.astype(bool)


# --------------------------------------------------------------------------- on-disk layouts


def _sample_paths(layout: str, split: str, index: int) -> tuple[str, str]:
    """Image and annotation path of a sample, relative to the data root."""
    if layout == "cityscapes":
        city = _CITYSCAPES_CITIES[split][index % 2]
        stem = f"{city}_{index // 2:06d}_000019"
        return (
            f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
            f"gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png",
        )
    name = f"ADE_{split}_{index + 1:08d}"
    split_dir = _ADE_SPLIT_DIRS[split]
    return f"images/{split_dir}/{name}.jpg", f"annotations/{split_dir}/{name}.png"


def _cityscapes_extras(params: dict[str, Any], split: str, index: int) -> tuple[str, ...]:
    """Polygons and label-id paths of a Cityscapes sample (none for more than 19 classes)."""
    if params["layout"] != "cityscapes" or params["num_classes"] >= NUM_TRAIN_IDS:
        return ()
    label = _sample_paths("cityscapes", split, index)[1]
    stem = label[: -len("_gtFine_labelTrainIds.png")]
    suffixes = ("polygons.json", "labelIds.png", "instanceIds.png")
    return tuple(f"{stem}_gtFine_{suffix}" for suffix in suffixes)


def _draw_polygons(objects: list, shape: tuple[int, int]) -> np.ndarray:
    """Train ids as cityscapesScripts' ``createLabelImage`` draws them (PIL polygons in order
    on an unlabeled background)."""
    image = Image.new("L", (shape[1], shape[0]), 255)
    draw = ImageDraw.Draw(image)
    for train_id, polygon in objects:
        draw.polygon([tuple(p) for p in polygon], fill=train_id)
    return np.asarray(image)


def label_polygons(label: np.ndarray) -> list:
    """``(train id, [[x, y], ...])`` polygons that PIL draws, in order, into exactly ``label``:
    the outer contour of every connected region, largest first (an enclosed region comes after
    its surroundings), then one-pixel polygons for the pixels contours alone miss."""
    regions = []
    for value in np.unique(label):
        count, components = cv2.connectedComponents((label == value).astype(np.uint8), None, 8)
        for component in range(1, count):
            mask = (components == component).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            for contour in contours:
                points = contour[:, 0, :].tolist()
                filled = cv2.drawContours(np.zeros_like(mask), [contour], -1, 1, -1)
                regions.append(
                    (int(filled.sum()), int(value), points * (2 if len(points) == 1 else 1))
                )
    regions.sort(key=lambda region: -region[0])
    objects = [(value, points) for _, value, points in regions]
    for _ in range(3):  # a pixel fixed late can only be covered by a later fix: converges
        ys, xs = np.nonzero(_draw_polygons(objects, label.shape) != label)
        if not len(ys):
            return objects
        objects += [(int(label[y, x]), [[int(x), int(y)]] * 2) for y, x in zip(ys, xs)]
    raise RuntimeError("label_polygons: the polygons do not reproduce the label map")


def instance_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes' ``*_gtFine_instanceIds.png`` (uint16): ``id * 1000 + n`` for the n-th
    connected region of a class with instances (ids 24..33, person to bicycle), else ``id``."""
    instances = label_ids.astype(np.uint16)
    for label_id in np.unique(label_ids):
        if label_id in INSTANCE_IDS:
            count, regions = cv2.connectedComponents((label_ids == label_id).astype(np.uint8))
            mask = regions > 0
            instances[mask] = int(label_id) * 1000 + regions[mask] - 1
    return instances


def _encode_cityscapes_extras(label: np.ndarray) -> tuple[bytes, bytes, bytes]:
    """``*_gtFine_polygons.json`` (Cityscapes' format), ``*_gtFine_labelIds.png`` and
    ``*_gtFine_instanceIds.png``."""
    names = {train_id: name for _, name, train_id in LABELS}
    objects = [
        {"label": names[value], "polygon": points} for value, points in label_polygons(label)
    ]
    document = {"imgHeight": int(label.shape[0]), "imgWidth": int(label.shape[1])}
    document["objects"] = objects
    label_ids = train_id_to_id_lut()[label]
    ok_ids, ids = cv2.imencode(".png", label_ids)
    ok_instances, instances = cv2.imencode(".png", instance_ids(label_ids))
    if not (ok_ids and ok_instances):
        raise RuntimeError("cv2 failed to encode a label-id map")
    return json.dumps(document).encode("utf-8"), ids.tobytes(), instances.tobytes()


def _split_dirs(layout: str, split: str) -> tuple[str, str]:
    """Image and annotation directory of a split (mmseg ``data_prefix``), relative to the root."""
    if layout == "cityscapes":
        return f"leftImg8bit/{split}", f"gtFine/{split}"
    return f"images/{_ADE_SPLIT_DIRS[split]}", f"annotations/{_ADE_SPLIT_DIRS[split]}"


def _counts(params: dict[str, Any]) -> dict[str, int]:
    return {"train": params["num_train"], "val": params["num_val"]}


def _expected_paths(params: dict[str, Any]) -> list[str]:
    return [
        path
        for split, count in _counts(params).items()
        for index in range(count)
        for path in _sample_paths(params["layout"], split, index)
        + _cityscapes_extras(params, split, index)
    ]


def _encode_sample(layout: str, sample: SyntheticSample) -> tuple[bytes, bytes]:
    """Encoded image (RGB written as BGR, as cv2 expects) and annotation files."""
    bgr = np.ascontiguousarray(sample.image[..., ::-1])
    if layout == "cityscapes":
        ok_image, image = cv2.imencode(".png", bgr)
        ok_label, label = cv2.imencode(".png", sample.label)
    else:
        ok_image, image = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        ok_label, label = cv2.imencode(".png", sample.label + np.uint8(1))
    if not (ok_image and ok_label):
        raise RuntimeError("cv2 failed to encode a synthetic sample")
    return image.tobytes(), label.tobytes()


def _read_manifest(root: str) -> dict[str, Any] | None:
    """The manifest written by this module, or None if absent or not ours."""
    try:
        with open(os.path.join(root, MANIFEST_NAME), encoding="utf-8") as file:
            manifest = json.load(file)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != _GENERATOR_ID:
        return None
    return manifest


def _write_manifest(root: str, params: dict[str, Any], complete: bool) -> None:
    metainfo = synthetic_metainfo(params["num_classes"])
    manifest = {
        "generator": _GENERATOR_ID,
        "params": params,
        "complete": complete,
        "counts": _counts(params),
        "classes": list(metainfo["classes"]),
        "palette": [list(color) for color in metainfo["palette"]],
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write_text(os.path.join(root, MANIFEST_NAME), text)


def _remove_stale_files(root: str, old_params: dict[str, Any], new_paths: set[str]) -> None:
    """Delete files an earlier generation wrote that the new parameters do not produce."""
    stale = [path for path in _expected_paths(old_params) if path not in new_paths]
    for path in stale:
        if os.path.isfile(os.path.join(root, path)):
            os.remove(os.path.join(root, path))
    for directory in sorted({os.path.dirname(path) for path in stale}, reverse=True):
        with contextlib.suppress(OSError):  # only empty directories are removed
            os.removedirs(os.path.join(root, directory))


def _check_foreign_files(root: str, layout: str) -> None:
    """Refuse to write into split directories that hold data this module did not generate."""
    for split in SPLITS:
        for directory in _split_dirs(layout, split):
            for _, _, files in os.walk(os.path.join(root, directory)):
                if files:
                    raise FileExistsError(
                        f"{os.path.join(root, directory)} holds files not generated by "
                        f"{_GENERATOR_ID} (no {MANIFEST_NAME}); use an empty root"
                    )


def _summary(root: str, params: dict[str, Any], generated: bool) -> dict[str, Any]:
    metainfo = synthetic_metainfo(params["num_classes"])
    cue_distance = params.get("cue_distance", MIN_CUE_DISTANCE_FRACTION)
    splits = {}
    for split, count in _counts(params).items():
        img_dir, ann_dir = _split_dirs(params["layout"], split)
        splits[split] = {"img_dir": img_dir, "ann_dir": ann_dir, "num_samples": count}
    is_cityscapes = params["layout"] == "cityscapes"
    return {
        "root": root,
        "layout": params["layout"],
        "splits": splits,
        "img_suffix": "_leftImg8bit.png" if is_cityscapes else ".jpg",
        "seg_map_suffix": "_gtFine_labelTrainIds.png" if is_cityscapes else ".png",
        "reduce_zero_label": not is_cityscapes,
        "size": tuple(params["size"]),
        "num_classes": params["num_classes"],
        "seed": params["seed"],
        "classes": metainfo["classes"],
        "palette": metainfo["palette"],
        "cue_distance": cue_distance,
        "geometry": long_range_geometry(tuple(params["size"]), cue_distance)._asdict(),
        "manifest": os.path.join(root, MANIFEST_NAME),
        "generated": generated,
    }


def generate_long_range_dataset(
    root: str | os.PathLike,
    layout: str = "cityscapes",
    num_train: int = 200,
    num_val: int = 50,
    size: tuple[int, int] = (128, 256),
    num_classes: int = 4,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    cue_distance: float = MIN_CUE_DISTANCE_FRACTION,
) -> dict[str, Any]:
    """Write the long-range-context data set (see the module docstring) under ``root``.

    Skips the work if ``root`` already holds a complete data set generated with the same parameters,
    unless ``overwrite``.  Files of an earlier generation with other parameters are replaced; a root
    whose split directories hold files of unknown origin is refused (``FileExistsError``).

    Returns a summary: ``root``, ``layout``, per-split ``img_dir``/``ann_dir`` (mmseg
    ``data_prefix``) and ``num_samples``, file suffixes, ``reduce_zero_label``, ``classes``,
    ``palette``, ``cue_distance``, ``geometry`` and ``generated`` (False when skipped).

    ``cue_distance`` (a fraction of the height, 0.4 by default) is how far below the cue band the
    objects start: the distance the context has to bridge (the head comparison sweeps it).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    height, width = _check_size(size)
    _check_num_classes(num_classes)
    root = os.fspath(root)
    params = {
        "version": _GENERATOR_VERSION,
        "layout": layout,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "size": [height, width],
        "num_classes": int(num_classes),
        "seed": int(seed),
    }
    if cue_distance != MIN_CUE_DISTANCE_FRACTION:  # the default keeps earlier manifests valid
        params["cue_distance"] = float(cue_distance)
    long_range_geometry((height, width), cue_distance)
    new_paths = _expected_paths(params)
    manifest = _read_manifest(root)
    if manifest is None:
        _check_foreign_files(root, layout)
    else:
        if (
            not overwrite
            and manifest.get("complete")
            and manifest.get("params") == params
            and all(os.path.isfile(os.path.join(root, path)) for path in new_paths)
        ):
            return _summary(root, params, generated=False)
        # a manifest with unreadable parameters: nothing known to clean up
        with contextlib.suppress(KeyError, TypeError, ValueError):
            _remove_stale_files(root, manifest["params"], set(new_paths))

    os.makedirs(root, exist_ok=True)
    _write_manifest(root, params, complete=False)
    with Progress(num_train + num_val, enabled=progress, stream=sys.stdout) as bar:
        for split, count in (("train", num_train), ("val", num_val)):
            for index in range(count):
                sample = render_long_range_sample(
                    seed, split, index, (height, width), num_classes, cue_distance
                )
                image_path, label_path = _sample_paths(layout, split, index)
                image_bytes, label_bytes = _encode_sample(layout, sample)
                atomic_write_bytes(os.path.join(root, image_path), image_bytes)
                atomic_write_bytes(os.path.join(root, label_path), label_bytes)
                extras = _cityscapes_extras(params, split, index)
                for path, data in zip(extras, _encode_cityscapes_extras(sample.label)):
                    atomic_write_bytes(os.path.join(root, path), data)
                bar.update()
    _write_manifest(root, params, complete=True)
    return _summary(root, params, generated=True)
