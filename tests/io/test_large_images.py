"""ann_seg.io.large_images: lazy TIFF rows equal the array, streamed label PNG/TIFF equal the
whole-image encoders, GeoTIFF tags survive, interrupted writers leave nothing behind."""

import io
import os
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from ann_seg.io import ImageError, encode_label_png, read_image
from ann_seg.io.large_images import (
    DecodedRows,
    PngLabelWriter,
    TiffLabelWriter,
    TiffRows,
    open_rows,
)


def _palette(n):
    rng = np.random.default_rng(n)
    return [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(n)]


def _decode_png(data: bytes):
    """(pixels, PIL mode, palette or None) as a reader sees them."""
    with Image.open(io.BytesIO(data)) as image:
        palette = image.getpalette() if image.mode == "P" else None
        mode = image.mode
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mode == "P":  # OpenCV expands palettes: take the indices from PIL
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.array(image)
    return pixels, mode, palette


def _write_in_chunks(writer, label, chunks):
    y = 0
    for n in chunks:
        writer.write_rows(y, label[y : y + n])
        y += n
    writer.close()


@pytest.mark.parametrize(
    "shape,classes,chunks",
    [
        ((37, 53), 5, [1, 7, 29]),  # odd width, P mode
        ((64, 1), 19, [64]),  # one column
        ((3, 301), 256, [2, 1]),  # all 256 ids
        ((45, 77), 300, [10, 35]),  # > 256 classes: 16-bit grey
        ((20, 9), 70000 // 2, [20]),
    ],
)
def test_streamed_png_decodes_like_encode_label_png(tmp_path, shape, classes, chunks):
    rng = np.random.default_rng(0)
    label = rng.integers(0, classes, shape).astype(np.int64)
    palette = _palette(classes)
    path = tmp_path / "label.png"
    writer = PngLabelWriter(str(path), *shape, palette)
    writer.IDAT_BYTES = 64  # several IDAT chunks
    _write_in_chunks(writer, label, chunks)
    streamed = _decode_png(path.read_bytes())
    whole = _decode_png(encode_label_png(label, palette))
    np.testing.assert_array_equal(streamed[0], whole[0])
    np.testing.assert_array_equal(streamed[0], label)
    assert streamed[1] == whole[1] == ("P" if classes <= 256 else "I;16")
    if classes <= 256:
        assert streamed[2][: 3 * classes] == whole[2][: 3 * classes]
    assert os.listdir(tmp_path) == ["label.png"]


def test_png_writer_refuses_bad_rows_and_leaves_nothing(tmp_path):
    path = tmp_path / "label.png"
    path.write_bytes(b"old")
    writer = PngLabelWriter(str(path), 10, 8, _palette(5))
    writer.write_rows(0, np.zeros((4, 8), np.uint8))
    with pytest.raises(ValueError, match="rows must come in order: got 5, expected 4"):
        writer.write_rows(5, np.zeros((2, 8), np.uint8))
    assert os.listdir(tmp_path) == ["label.png"] and path.read_bytes() == b"old"
    with pytest.raises(ValueError, match=r"class ids outside 0..255"):
        PngLabelWriter(str(tmp_path / "b.png"), 1, 2, _palette(5)).write_rows(
            0, np.array([[0, 256]])
        )
    with pytest.raises(ValueError, match="3 of 10 rows written"):
        with PngLabelWriter(str(tmp_path / "c.png"), 10, 8, _palette(5)) as w:
            w.write_rows(0, np.zeros((3, 8), np.uint8))
    assert os.listdir(tmp_path) == ["label.png"]


@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_interrupted_writer_leaves_no_temp_file(tmp_path, kind):
    path = tmp_path / f"label.{kind}"
    writer_type = PngLabelWriter if kind == "png" else TiffLabelWriter
    with pytest.raises(KeyboardInterrupt):
        with writer_type(str(path), 600, 300, _palette(3)) as writer:
            writer.write_rows(0, np.ones((300, 300), np.uint8))
            assert len(os.listdir(tmp_path)) == 1  # the temporary file
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def _rgb(h, w, dtype=np.uint8, channels=3, seed=0):
    top = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels == 1 else (h, w, channels)
    return np.random.default_rng(seed).integers(0, top + 1, shape).astype(dtype)


TIFF_CASES = {
    "tiled-rgb": dict(data=_rgb(300, 517), tile=(64, 96), compression="zlib"),
    "stripped-rgb": dict(data=_rgb(301, 203), rowsperstrip=7, compression="zlib"),
    "one-strip": dict(data=_rgb(50, 61), rowsperstrip=50),
    "contiguous": dict(data=_rgb(129, 77)),  # uncompressed: rows read from the file directly
    "bigtiff-tiled": dict(data=_rgb(200, 300), tile=(48, 64), bigtiff=True, compression="zlib"),
    "grey": dict(data=_rgb(97, 203, channels=1), tile=(32, 32), compression="zlib"),
    "rgba": dict(data=_rgb(90, 130, channels=4), tile=(32, 48), photometric="rgb"),
    "rgb16": dict(data=_rgb(70, 91, np.uint16), tile=(32, 32), compression="zlib", predictor=True),
    "planar": dict(
        data=_rgb(88, 65).transpose(2, 0, 1).copy(),
        photometric="rgb",
        planarconfig="separate",
        rowsperstrip=9,
        compression="zlib",
    ),
    "big-endian": dict(data=_rgb(40, 50, np.uint16), byteorder=">", rowsperstrip=3),
}


def _expected_bgr(data, case):
    if case == "planar":
        data = data.transpose(1, 2, 0)
    if data.dtype == np.uint16:
        data = ((data.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if data.ndim == 2:
        return np.repeat(data[..., None], 3, axis=2)
    return np.ascontiguousarray(data[..., 2::-1])


@pytest.mark.parametrize("case", sorted(TIFF_CASES))
def test_tiff_rows_equal_the_array(tmp_path, case):
    options = dict(TIFF_CASES[case])
    data = options.pop("data")
    path = str(tmp_path / "image.tif")
    tifffile.imwrite(path, data, **options)
    expected = _expected_bgr(data, case)
    with open_rows(path) as rows:
        assert isinstance(rows, TiffRows) and rows.source["lazy"]
        assert (rows.height, rows.width) == expected.shape[:2]
        h = rows.height
        # forward with overlaps, as the sliding window reads, then arbitrary ranges
        for y0, y1 in [(0, min(5, h)), (2, min(40, h)), (h // 2, h), (0, h), (h - 1, h)]:
            np.testing.assert_array_equal(rows.read_rows(y0, y1), expected[y0:y1])
    if case not in ("planar", "grey", "rgba"):  # OpenCV's reading, where it reads the layout
        np.testing.assert_array_equal(read_image(path)[0], expected)


def test_huge_tiff_is_read_without_decoding_it_whole(tmp_path):
    """A 50000 x 30000 BigTIFF (beyond read_image's and OpenCV's pixel limits; 4.5 GB as RGB)
    of empty tiles but one: reading rows decodes only the tiles of those rows."""
    path = str(tmp_path / "huge.tif")
    h, w, tile = 50000, 30000, (1024, 1024)
    blank = zlib.compress(bytes(tile[0] * tile[1] * 3))
    marked = zlib.compress(np.full((*tile, 3), (10, 20, 30), np.uint8).tobytes())
    count = -(-h // tile[0]) * -(-w // tile[1])
    tifffile.imwrite(  # pre-compressed tiles: writing 1470 tiles takes no time
        path,
        (marked if i == 3 else blank for i in range(count)),
        shape=(h, w, 3),
        dtype=np.uint8,
        tile=tile,
        bigtiff=True,
        compression="zlib",
        photometric="rgb",
    )
    with pytest.raises(ImageError, match="too large"):
        read_image(path)
    with open_rows(path) as rows:
        assert (rows.height, rows.width) == (h, w) and rows.source["bigtiff"]
        band = rows.read_rows(100, 110)
        assert band.shape == (10, w, 3)
        assert (band[:, 3 * 1024 : 4 * 1024] == (30, 20, 10)).all()  # BGR
        assert not band[:, : 3 * 1024].any() and not band[:, 4 * 1024 :].any()
        assert not rows.read_rows(h - 3, h).any()


def test_tiff_needing_imagecodecs_falls_back_or_refuses(tmp_path, monkeypatch):
    data = _rgb(40, 60)
    path = str(tmp_path / "lzw.tif")
    tifffile.imwrite(path, data, compression="zlib")
    # pretend the codec is missing (imagecodecs is not installed; LZW cannot even be written)
    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", {})
    with open_rows(path) as rows:
        assert isinstance(rows, DecodedRows)
        np.testing.assert_array_equal(rows.read_rows(0, 40), data[..., ::-1])
    with pytest.raises(ImageError, match="too large.*and not readable in rows: .*ADOBE_DEFLATE"):
        open_rows(path, max_pixels=100)


def test_other_formats_go_through_read_image(tmp_path):
    image = _rgb(33, 47)
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, image)
    with open_rows(path) as rows:
        assert isinstance(rows, DecodedRows) and rows.source["format"] == "PNG"
        np.testing.assert_array_equal(rows.read_rows(3, 9), image[3:9])
    with pytest.raises(ImageError, match="TIFF without images"):
        (tmp_path / "b.tif").write_bytes(b"II*\x00garbage")
        open_rows(str(tmp_path / "b.tif"))


GEO = [
    (33550, "d", 3, (0.5, 0.5, 0.0), True),
    (33922, "d", 6, (0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0), True),
    (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32611), True),
    (34736, "d", 1, (6378137.0,), True),
    (34737, "s", 0, "WGS 84 / UTM zone 11N|", True),
    (42112, "s", 0, "<GDALMetadata>\n</GDALMetadata>", True),
    (42113, "s", 0, "255", True),
]


def test_geotiff_tags_survive_into_the_label_tiff(tmp_path):
    src = str(tmp_path / "geo.tif")
    tifffile.imwrite(src, _rgb(300, 410), tile=(64, 64), compression="zlib", extratags=GEO)
    out = str(tmp_path / "label.tif")
    label = np.random.default_rng(1).integers(0, 19, (300, 410)).astype(np.uint8)
    with open_rows(src) as rows:
        writer = TiffLabelWriter(out, 300, 410, _palette(19), extratags=rows.geotiff, tile=(64, 80))
    _write_in_chunks(writer, label, [1, 63, 100, 136])
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(out) as b:
        page = b.pages.first
        assert page.is_tiled and page.compression == 8  # deflate
        np.testing.assert_array_equal(page.asarray(), label)
        for code, *_ in GEO:
            assert page.tags[code].value == a.pages.first.tags[code].value, code
        assert b.geotiff_metadata["ProjectedCSTypeGeoKey"] == 32611
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert tuple(page.colormap[:, 4] // 257) == _palette(19)[4]
    assert sorted(os.listdir(tmp_path)) == ["geo.tif", "label.tif"]


@pytest.mark.parametrize("shape,classes", [((1, 1), 2), ((100, 33), 300), ((257, 513), 5)])
def test_tiff_label_writer_round_trips(tmp_path, shape, classes):
    label = np.random.default_rng(2).integers(0, classes, shape)
    out = str(tmp_path / "label.tif")
    with TiffLabelWriter(out, *shape, _palette(classes), tile=(16, 32)) as writer:
        _write_in_chunks(writer, label, [shape[0]])
    stored = tifffile.imread(out)
    assert stored.dtype == (np.uint8 if classes <= 256 else np.uint16)
    np.testing.assert_array_equal(stored, label)


def test_tiff_label_writer_incomplete_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="16 of 40 rows written"):
        with TiffLabelWriter(str(tmp_path / "l.tif"), 40, 40, _palette(3), tile=(16, 16)) as w:
            w.write_rows(0, np.zeros((16, 40), np.uint8))
    assert os.listdir(tmp_path) == []
