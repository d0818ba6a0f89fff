"""Tests of the long-range-context synthetic data set (ann_seg.datasets.synthetic)."""

import colorsys
import json
import math
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from ann_seg.mmseg.cityscapes import LABELS
from ann_seg.mmseg.synthetic import (
    MANIFEST_NAME,
    MIN_CUE_DISTANCE_FRACTION,
    SYNTHETIC_CLASSES,
    SYNTHETIC_PALETTE,
    generate_long_range_dataset,
    long_range_geometry,
    render_long_range_sample,
    synthetic_metainfo,
)

SMALL = {"num_train": 3, "num_val": 2, "size": (64, 96), "progress": False}


def _files(root):
    """Relative path -> bytes of every file under root."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as file:
                found[os.path.relpath(path, root)] = file.read()
    return found


def _stats(root):
    return {path: os.stat(os.path.join(root, path)) for path in _files(root)}


def _read_unchanged(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _blur(image):
    return cv2.blur(image.astype(np.float32), (5, 5))


def test_metainfo_constants():
    assert SYNTHETIC_CLASSES == ("background", "class_a", "class_b", "class_c", "class_d")
    assert len(SYNTHETIC_PALETTE) == 5 and len(set(SYNTHETIC_PALETTE)) == 5
    assert synthetic_metainfo(4) == {"classes": SYNTHETIC_CLASSES, "palette": SYNTHETIC_PALETTE}
    assert len(synthetic_metainfo(30)["classes"]) == len(synthetic_metainfo(30)["palette"]) == 31
    with pytest.raises(ValueError):
        synthetic_metainfo(0)


@pytest.mark.parametrize("layout", ["cityscapes", "ade20k"])
def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path, layout):
    first = generate_long_range_dataset(tmp_path / "a", layout=layout, seed=3, **SMALL)
    generate_long_range_dataset(tmp_path / "b", layout=layout, seed=3, **SMALL)
    generate_long_range_dataset(tmp_path / "c", layout=layout, seed=4, **SMALL)
    files_a, files_b, files_c = (_files(tmp_path / name) for name in "abc")
    per_sample = 5 if layout == "cityscapes" else 2  # + polygons, label and instance ids
    assert first["generated"] and len(files_a) == per_sample * (3 + 2) + 1
    assert files_a == files_b
    assert files_a.keys() == files_c.keys()
    images = [path for path in files_a if path.endswith((".jpg", "_leftImg8bit.png"))]
    assert all(files_a[path] != files_c[path] for path in images)


def test_a_split_does_not_depend_on_the_other_split_size(tmp_path):
    generate_long_range_dataset(tmp_path / "a", **{**SMALL, "num_val": 1})
    generate_long_range_dataset(tmp_path / "b", **{**SMALL, "num_train": 1, "num_val": 2})
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    shared = (files_a.keys() & files_b.keys()) - {MANIFEST_NAME}
    assert len(shared) == 5 * (1 + 1)
    assert all(files_a[path] == files_b[path] for path in shared)


def test_cityscapes_layout_file_names(tmp_path):
    summary = generate_long_range_dataset(tmp_path, layout="cityscapes", **SMALL)
    stems = {
        "train": [
            "farfield/farfield_000000_000019",
            "longreach/longreach_000000_000019",
            "farfield/farfield_000001_000019",
        ],
        "val": ["distantvale/distantvale_000000_000019", "remoteford/remoteford_000000_000019"],
    }
    expected = {MANIFEST_NAME}
    for split, split_stems in stems.items():
        for stem in split_stems:
            expected.add(f"leftImg8bit/{split}/{stem}_leftImg8bit.png")
            for suffix in ("labelTrainIds.png", "polygons.json", "labelIds.png", "instanceIds.png"):
                expected.add(f"gtFine/{split}/{stem}_gtFine_{suffix}")
    assert set(_files(tmp_path)) == expected
    assert summary["splits"]["train"] == {
        "img_dir": "leftImg8bit/train",
        "ann_dir": "gtFine/train",
        "num_samples": 3,
    }
    assert (summary["img_suffix"], summary["seg_map_suffix"]) == (
        "_leftImg8bit.png",
        "_gtFine_labelTrainIds.png",
    )
    assert summary["reduce_zero_label"] is False


def test_ade20k_layout_file_names(tmp_path):
    summary = generate_long_range_dataset(tmp_path, layout="ade20k", **SMALL)
    expected = {MANIFEST_NAME}
    for split, split_dir, count in (("train", "training", 3), ("val", "validation", 2)):
        for number in range(1, count + 1):
            expected.add(f"images/{split_dir}/ADE_{split}_{number:08d}.jpg")
            expected.add(f"annotations/{split_dir}/ADE_{split}_{number:08d}.png")
    assert set(_files(tmp_path)) == expected
    assert summary["splits"]["val"] == {
        "img_dir": "images/validation",
        "ann_dir": "annotations/validation",
        "num_samples": 2,
    }
    assert summary["reduce_zero_label"] is True


def _expected_pair(layout, split, index):
    """Image and annotation path of sample ``index``, relative to the data root."""
    if layout == "cityscapes":
        city = {"train": ("farfield", "longreach"), "val": ("distantvale", "remoteford")}[split][
            index % 2
        ]
        stem = f"{split}/{city}/{city}_{index // 2:06d}_000019"
        return f"leftImg8bit/{stem}_leftImg8bit.png", f"gtFine/{stem}_gtFine_labelTrainIds.png"
    stem = f"{'training' if split == 'train' else 'validation'}/ADE_{split}_{index + 1:08d}"
    return f"images/{stem}.jpg", f"annotations/{stem}.png"


@pytest.mark.parametrize("size", [(64, 96), (97, 131)])
@pytest.mark.parametrize("layout", ["cityscapes", "ade20k"])
def test_images_and_labels_match_the_rendered_samples(tmp_path, layout, size):
    num_classes = 3
    summary = generate_long_range_dataset(
        tmp_path, layout=layout, num_train=4, num_val=2, size=size, num_classes=num_classes,
        seed=7, progress=False,
    )  # fmt: skip
    for split, info in summary["splits"].items():
        # mmseg pairs files by swapping the image suffix for the annotation suffix
        img_dir, ann_dir = tmp_path / info["img_dir"], tmp_path / info["ann_dir"]
        for image_path in img_dir.rglob("*" + summary["img_suffix"]):
            relative = str(image_path.relative_to(img_dir))[: -len(summary["img_suffix"])]
            assert (ann_dir / (relative + summary["seg_map_suffix"])).is_file()

        for index in range(info["num_samples"]):
            image_path, label_path = _expected_pair(layout, split, index)
            image, label = (
                _read_unchanged(tmp_path / image_path),
                _read_unchanged(tmp_path / label_path),
            )
            assert image.shape == (*size, 3) and image.dtype == np.uint8
            assert label.shape == size and label.dtype == np.uint8
            if layout == "ade20k":
                assert 1 <= label.min() and label.max() <= num_classes + 1  # 0 ("other") unused
                label = label - 1  # what reduce_zero_label yields for values >= 1
            assert set(np.unique(label)) <= set(range(num_classes + 1))

            sample = render_long_range_sample(7, split, index, size, num_classes)
            np.testing.assert_array_equal(label, sample.label)
            rgb = image[..., ::-1].astype(np.int16)  # cv2 reads BGR
            if layout == "cityscapes":  # lossless PNG
                np.testing.assert_array_equal(rgb, sample.image)
            else:  # JPEG quality 95 smooths the pixel noise (sigma 7.65) but keeps the content
                assert np.abs(rgb - sample.image).mean() < 7
                assert np.abs(_blur(rgb) - _blur(sample.image)).mean() < 1.5


def test_second_call_skips_and_overwrite_regenerates(tmp_path):
    assert generate_long_range_dataset(tmp_path, **SMALL)["generated"]
    before = _stats(tmp_path)
    assert not generate_long_range_dataset(tmp_path, **SMALL)["generated"]
    assert _stats(tmp_path) == before  # nothing rewritten: same mtimes and inodes

    contents = _files(tmp_path)
    assert generate_long_range_dataset(tmp_path, overwrite=True, **SMALL)["generated"]
    after = _stats(tmp_path)
    assert after.keys() == before.keys()
    # replaced files (a freed inode number may be reused: the write time tells them apart)
    assert all(
        (after[p].st_ino, after[p].st_mtime_ns) != (before[p].st_ino, before[p].st_mtime_ns)
        for p in before
    )
    assert _files(tmp_path) == contents


def test_other_parameters_replace_the_previous_generation(tmp_path):
    generate_long_range_dataset(tmp_path, layout="cityscapes", **SMALL)
    generate_long_range_dataset(tmp_path, layout="cityscapes", **{**SMALL, "num_train": 1})
    assert len(_files(tmp_path)) == 5 * (1 + 2) + 1
    generate_long_range_dataset(tmp_path, layout="ade20k", **SMALL)
    assert not (tmp_path / "leftImg8bit").exists() and not (tmp_path / "gtFine").exists()
    assert len(_files(tmp_path)) == 2 * (3 + 2) + 1


def test_foreign_data_and_bad_arguments_are_refused(tmp_path):
    foreign = tmp_path / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"real data")
    with pytest.raises(FileExistsError):
        generate_long_range_dataset(tmp_path, **SMALL)
    with pytest.raises(ValueError):
        generate_long_range_dataset(tmp_path / "x", layout="voc", **SMALL)
    with pytest.raises(ValueError):
        generate_long_range_dataset(tmp_path / "x", **{**SMALL, "size": (16, 96)})


def test_progress_bar_runs(tmp_path, capsys):
    generate_long_range_dataset(tmp_path, **{**SMALL, "progress": True})
    assert "5/5" in capsys.readouterr().out


# --------------------------------------------------------------------- the long-range property

NUM_CLASSES, SIZE, NUM_SAMPLES, WINDOW_RADIUS = 4, (64, 128), 160, 3


@pytest.fixture(scope="module")
def samples():
    return [
        render_long_range_sample(11, "train", index, SIZE, NUM_CLASSES)
        for index in range(NUM_SAMPLES)
    ]


def _nearest_class_mean_accuracy(features, classes, is_train):
    """Held-out accuracy of a nearest-class-mean classifier on standardised features."""
    features = (features - features[is_train].mean(0)) / (features[is_train].std(0) + 1e-9)
    labels = sorted(set(classes[is_train]))
    means = np.stack([features[is_train & (classes == label)].mean(0) for label in labels])
    distances = ((features[~is_train, None, :] - means[None]) ** 2).sum(-1)
    return (np.array(labels)[distances.argmin(1)] == classes[~is_train]).mean()


def _cue_rows_from_pixels(image):
    """Rows whose mean chroma (max - min over RGB) is high: where the coloured cue is."""
    chroma = image.max(2).astype(np.float32) - image.min(2)
    return np.flatnonzero(chroma.mean(1) > 80)


def test_cue_band_is_found_in_the_pixels_and_objects_are_far_from_it(samples):
    geometry = long_range_geometry(SIZE)
    assert geometry.min_cue_distance >= MIN_CUE_DISTANCE_FRACTION * SIZE[0]
    for sample in samples:
        cue_rows = _cue_rows_from_pixels(sample.image)
        np.testing.assert_array_equal(cue_rows, np.arange(geometry.cue_rows))
        is_object = sample.label > 0
        assert is_object.any()
        not_cue = np.ones(SIZE, np.uint8)
        not_cue[cue_rows] = 0
        distance_to_cue = cv2.distanceTransform(not_cue, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        assert distance_to_cue[is_object].min() >= geometry.min_cue_distance
        assert np.flatnonzero(is_object.any(1)).min() >= geometry.min_object_row


def test_cue_colour_determines_the_object_class(samples):
    for sample in samples:
        cue_rgb = np.median(sample.image[_cue_rows_from_pixels(sample.image)], axis=(0, 1)) / 255
        hue = colorsys.rgb_to_hsv(*cue_rgb)[0]
        cue_class = 1 + round(hue * NUM_CLASSES) % NUM_CLASSES
        assert set(np.unique(sample.label)) == {0, cue_class} and cue_class == sample.cue_class


def _local_window_features(sample, rng, per_image=12):
    """Mean and std per RGB channel in windows centred on random object pixels."""
    rows, cols = np.nonzero(sample.label > 0)
    pad = (WINDOW_RADIUS, WINDOW_RADIUS)
    padded = np.pad(sample.image.astype(np.float32), (pad, pad, (0, 0)), "reflect")
    window_size = 2 * WINDOW_RADIUS + 1
    features = []
    for pick in rng.choice(len(rows), size=per_image):
        # padded[r : r + window_size] is centred on image row r
        window = padded[
            rows[pick] : rows[pick] + window_size, cols[pick] : cols[pick] + window_size
        ]
        features.append(np.concatenate([window.mean((0, 1)), window.std((0, 1))]))
    return features


def test_local_appearance_of_objects_carries_no_class_information(samples):
    rng = np.random.default_rng(0)
    features, classes, is_train = [], [], []
    for index, sample in enumerate(samples):
        windows = _local_window_features(sample, rng)
        features += windows
        classes += [sample.cue_class] * len(windows)
        is_train += [index < NUM_SAMPLES // 2] * len(windows)  # split by image, not by pixel
    features, classes, is_train = np.array(features), np.array(classes), np.array(is_train)
    chance = 1 / NUM_CLASSES

    # local windows on objects: a nearest-class-mean classifier is at chance level ...
    local_accuracy = _nearest_class_mean_accuracy(features, classes, is_train)
    assert abs(local_accuracy - chance) < 0.1, local_accuracy
    # ... and the class means of every feature differ by far less than its spread within a class
    class_means = np.stack([features[classes == k].mean(0) for k in range(1, NUM_CLASSES + 1)])
    within_class_std = np.mean(
        [features[classes == k].std(0) for k in range(1, NUM_CLASSES + 1)], 0
    )
    assert ((class_means.max(0) - class_means.min(0)) / within_class_std).max() < 0.35

    # the same classifier on the far-away cue band is perfect
    cue_features = np.array(
        [sample.image[: long_range_geometry(SIZE).cue_rows].mean((0, 1)) for sample in samples]
    )
    cue_classes = np.array([sample.cue_class for sample in samples])
    image_is_train = np.arange(NUM_SAMPLES) < NUM_SAMPLES // 2
    assert _nearest_class_mean_accuracy(cue_features, cue_classes, image_is_train) == 1.0


@pytest.mark.parametrize("cue_distance", [0.1, 0.2, 0.6])
def test_cue_distance_moves_the_objects_and_keeps_them_that_far(cue_distance):
    geometry = long_range_geometry(SIZE, cue_distance)
    assert geometry.min_object_row == geometry.cue_rows + math.ceil(cue_distance * SIZE[0])
    rows = []
    for index in range(40):
        sample = render_long_range_sample(0, "train", index, SIZE, NUM_CLASSES, cue_distance)
        is_object = sample.label > 0
        assert is_object.any()
        not_cue = np.ones(SIZE, np.uint8)
        not_cue[: geometry.cue_rows] = 0
        distance = cv2.distanceTransform(not_cue, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        assert distance[is_object].min() >= geometry.min_cue_distance
        rows.append(np.flatnonzero(is_object.any(1)).min())
    # objects do come as near as allowed (within a few rows), not only far below it
    assert min(rows) - geometry.min_object_row <= 3


def test_cue_distance_default_keeps_data_and_manifest_and_others_are_refused(tmp_path):
    default = generate_long_range_dataset(tmp_path / "a", **SMALL)
    explicit = generate_long_range_dataset(tmp_path / "a", **SMALL, cue_distance=0.4)
    assert default["cue_distance"] == 0.4 and not explicit["generated"]  # same manifest
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    assert "cue_distance" not in manifest["params"]
    near = generate_long_range_dataset(tmp_path / "b", **SMALL, cue_distance=0.1)
    assert (
        near["generated"]
        and near["geometry"]["min_object_row"] < default["geometry"]["min_object_row"]
    )
    for bad in (0.0, 1.0, 0.9):
        with pytest.raises(ValueError, match="cue_distance"):
            generate_long_range_dataset(tmp_path / "c", **SMALL, cue_distance=bad)


def test_cityscapes_polygons_and_label_ids_draw_the_train_ids(tmp_path):
    """The polygons, drawn as cityscapesScripts' json2labelImg draws them (PIL, in order),
    give the train-id map exactly; the label-id map is it through Cityscapes' table."""
    generate_long_range_dataset(tmp_path, layout="cityscapes", num_classes=18, **SMALL)
    name_to_ids = {name: (label_id, train_id) for label_id, name, train_id in LABELS}
    stems = [str(p)[: -len("_gtFine_labelTrainIds.png")] for p in tmp_path.rglob("*TrainIds.png")]
    assert len(stems) == 5
    for stem in stems:
        train_ids = _read_unchanged(f"{stem}_gtFine_labelTrainIds.png")
        with open(f"{stem}_gtFine_polygons.json") as f:
            polygons = json.load(f)
        assert (polygons["imgHeight"], polygons["imgWidth"]) == train_ids.shape
        drawn = Image.new("L", (polygons["imgWidth"], polygons["imgHeight"]), 255)
        draw = ImageDraw.Draw(drawn)
        for obj in polygons["objects"]:
            draw.polygon([tuple(p) for p in obj["polygon"]], fill=name_to_ids[obj["label"]][1])
        np.testing.assert_array_equal(np.asarray(drawn), train_ids)
        label_ids = _read_unchanged(f"{stem}_gtFine_labelIds.png")
        lut = {train_id: label_id for label_id, train_id in name_to_ids.values()}
        np.testing.assert_array_equal(label_ids, np.vectorize(lut.get)(train_ids))
        instances = _read_unchanged(f"{stem}_gtFine_instanceIds.png")
        assert instances.dtype == np.uint16
        things = label_ids >= 24  # person ... bicycle: id * 1000 + instance
        np.testing.assert_array_equal(instances[~things], label_ids[~things])
        np.testing.assert_array_equal(instances[things] // 1000, label_ids[things])
    # more classes than Cityscapes has: no polygons
    generate_long_range_dataset(tmp_path / "wide", layout="cityscapes", num_classes=19, **SMALL)
    assert not list((tmp_path / "wide").rglob("*_polygons.json"))
