"""ann-seg prepare-data on generated data sets in the real layouts: Cityscapes polygons drawn
into train ids equal to the generator's, idempotent and kill-safe; the layout checks name each
problem's file and fix in one line."""

import os
import shutil

import cv2
import numpy as np
import pytest

from ann_seg.mmseg import prepare_data as prep
from ann_seg.mmseg.layout_check import check_layout
from ann_seg.mmseg.synthetic import generate_long_range_dataset
from ann_seg.tools import run_tool


def read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.fixture
def cityscapes_copy(cityscapes_root, tmp_path):
    root = tmp_path / "cityscapes"
    shutil.copytree(cityscapes_root, root)
    return root


def train_id_files(root):
    return sorted(root.rglob("*_gtFine_labelTrainIds.png"))


def test_polygons_become_the_generators_train_ids(tmp_path):
    root = tmp_path / "cs"
    generate_long_range_dataset(
        root, layout="cityscapes", num_train=6, num_val=3, size=(64, 128), num_classes=18,
        progress=False,
    )  # fmt: skip
    expected = {p: read(p) for p in train_id_files(root)}
    for path in expected:
        path.unlink()
    result = prep.prepare("cityscapes", str(root), workers=2, progress=False)
    assert result["conversion"]["converted"] == 9 and not result["conversion"]["failures"]
    assert prep.problem_count(result) == 0
    for path, label in expected.items():
        np.testing.assert_array_equal(read(path), label)
    assert (root / "train.txt").read_text().splitlines()[:2] == [
        "farfield/farfield_000000_000019",
        "farfield/farfield_000001_000019",
    ]
    assert len((root / "val.txt").read_text().splitlines()) == 3
    # idempotent: a second run keeps every up-to-date PNG (same inode and time)
    before = {p: os.stat(p) for p in expected}
    again = prep.prepare("cityscapes", str(root), workers=0, check=False, progress=False)
    assert again["conversion"]["converted"] == 0 and again["conversion"]["kept"] == 9
    assert all(os.stat(p).st_mtime_ns == before[p].st_mtime_ns for p in expected)
    forced = prep.prepare("cityscapes", str(root), force=True, check=False, progress=False)
    assert forced["conversion"]["converted"] == 9


def test_a_killed_run_leaves_nothing_a_later_run_trusts(cityscapes_copy):
    root = cityscapes_copy
    pngs = train_id_files(root)
    expected = {p: read(p) for p in pngs}
    for path in pngs:
        path.unlink()
    # what a kill during a write leaves: a hidden temporary file, never a *_labelTrainIds.png
    half = pngs[0].parent / f".{pngs[0].name}.k1ll3d.tmp"
    half.write_bytes(b"\x89PNG\r\n\x1a\n half")
    # and a run that stopped after some files: those are kept, the rest drawn
    prep.polygons_to_train_ids(str(pngs[1]).replace("labelTrainIds.png", "polygons.json"), pngs[1])
    result = prep.prepare("cityscapes", str(root), workers=2, check=False, progress=False)
    conversion = result["conversion"]
    assert conversion["removed_temporaries"] == 1 and not half.exists()
    assert conversion["kept"] == 1 and conversion["converted"] == len(pngs) - 1
    for path, label in expected.items():
        np.testing.assert_array_equal(read(path), label)


def test_a_bad_polygon_file_fails_alone(cityscapes_copy, capsys):
    root = cityscapes_copy
    pngs = train_id_files(root)
    for path in pngs:
        path.unlink()
    broken = str(pngs[0]).replace("labelTrainIds.png", "polygons.json")
    with open(broken, "w") as f:
        f.write('{"imgHeight": 64, "imgWidth": 128, "objects": [{"label": "dragon", ')
    status = run_tool("prepare-data", ["cityscapes", str(root), "--no-progress"])
    out = capsys.readouterr().out
    assert status == 1
    assert f"{os.path.relpath(broken, root)}: cannot draw" in out
    assert not pngs[0].exists() and all(p.exists() for p in pngs[1:])
    # the image whose polygons failed is reported by the layout check with the fix
    assert "not converted to *_gtFine_labelTrainIds.png; fix: ann-seg prepare-data" in out


def test_missing_extra_is_one_line(cityscapes_copy, monkeypatch, capsys):
    monkeypatch.setattr(prep, "createLabelImage", None)
    assert run_tool("prepare-data", ["cityscapes", str(cityscapes_copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'ann_seg[cityscapes]'" in err


def test_cityscapes_layout_problems_name_file_and_fix(cityscapes_copy, capsys):
    root = cityscapes_copy
    gt, images = root / "gtFine" / "train", root / "leftImg8bit" / "train"
    # missing half: an image whose gtFine files are gone
    for suffix in ("labelTrainIds.png", "polygons.json", "labelIds.png"):
        (gt / "farfield" / f"farfield_000000_000019_gtFine_{suffix}").unlink()
    # missing half: a label whose image is gone
    (images / "longreach" / "longreach_000000_000019_leftImg8bit.png").unlink()
    # unmatched pair: a label in the other split
    moved = "farfield_000001_000019_gtFine_labelTrainIds.png"
    (root / "gtFine" / "val" / "farfield").mkdir()
    shutil.move(gt / "farfield" / moved, root / "gtFine" / "val" / "farfield" / moved)
    # label ids where train ids belong
    ids = gt / "longreach" / "longreach_000001_000019_gtFine_labelIds.png"
    shutil.copy(ids, str(ids).replace("labelIds", "labelTrainIds"))
    lines = {p["file"]: f"{p['problem']}; fix: {p['fix']}" for p in
             check_layout("cityscapes", str(root), progress=False)}  # fmt: skip
    assert lines["leftImg8bit/train/farfield/farfield_000000_000019_leftImg8bit.png"].startswith(
        "missing half: no gtFine label"
    )
    assert (
        "unzip gtFine_trainvaltest.zip"
        in lines["leftImg8bit/train/farfield/farfield_000000_000019_leftImg8bit.png"]
    )
    stray = "gtFine/train/longreach/longreach_000000_000019_gtFine_labelTrainIds.png"
    assert lines[stray].startswith("missing half: no leftImg8bit image")
    assert lines[f"gtFine/val/farfield/{moved}"].startswith(
        "unmatched pair: its image is leftImg8bit/train/farfield/"
    )
    label_ids = "gtFine/train/longreach/longreach_000001_000019_gtFine_labelTrainIds.png"
    assert "holds Cityscapes label ids (7 (road)" in lines[label_ids]
    assert "prepare-data cityscapes ROOT --force" in lines[label_ids]
    # the command prints each as one line and exits 1; --force repairs the label-id file
    assert run_tool("prepare-data", ["cityscapes", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"{stray}: missing half" in out and "problem(s)" in out
    run_tool("prepare-data", ["cityscapes", str(root), "--force", "--no-progress"])
    assert read(root / label_ids).max() <= 4


def test_ade20k_zero_label_confusions(ade20k_root, tmp_path, capsys):
    root = tmp_path / "ade"
    shutil.copytree(ade20k_root, root)
    assert run_tool("prepare-data", ["ade20k", str(root), "--no-progress"]) == 0
    assert "ready" in capsys.readouterr().out
    annotations = sorted((root / "annotations" / "training").glob("*.png"))
    # an annotation with "other" (0) pixels, then reduced to 0-based with 255 = other
    original = read(annotations[0])
    original[:4] = 0
    reduced = original.astype(np.int16) - 1
    cv2.imwrite(str(annotations[0]), np.where(reduced < 0, 255, reduced).astype(np.uint8))
    # a value past the 150 classes
    label = read(annotations[1])
    label[0, 0] = 200
    cv2.imwrite(str(annotations[1]), label)
    # a missing image
    next((root / "images" / "validation").glob("*.jpg")).unlink()
    problems = check_layout("ade20k", str(root), progress=False)
    found = {p["file"]: p for p in problems}
    first = found[os.path.relpath(annotations[0], root)]
    assert "already reduced" in first["problem"] and "reduce_zero_label" in first["fix"]
    assert (
        "values [200] past the last class"
        in found[os.path.relpath(annotations[1], root)]["problem"]
    )
    assert any(p["problem"].startswith("missing half: no image") for p in problems)
    assert run_tool("prepare-data", ["ade20k", str(root), "--no-progress"]) == 1
