"""Images larger than memory: row sources to read them and label writers that stream the result.

* ``open_rows(path)``: the pixels as BGR uint8 rows on demand (``read_rows(y0, y1)``). TIFF
  (classic or BigTIFF, tiled or stripped, any size) is read lazily with ``tifffile``: only the
  strips/tiles of the rows asked for are decoded (the last strip/tile row is kept for the next
  call). Other formats are decoded whole by ``read_image`` (its pixel limit applies), as are
  TIFFs ``tifffile`` cannot decode without ``imagecodecs`` (LZW, JPEG, ...) when small enough.
  Conversions as ``read_image``: grey replicated, alpha dropped, 16-bit -> ``round(v / 257)``.
* ``PngLabelWriter``: a label PNG written row by row: palette (``P``) for <= 256 classes, 16-bit
  grey above, decoding to the same pixels as ``encode_label_png``. OpenCV and PIL only encode
  whole images, so the PNG chunks are written here with ``zlib``.
* ``TiffLabelWriter``: a tiled, deflate-compressed label TIFF written row by row, keeping the
  input's GeoTIFF tags (``geotiff_tags``).

Both writers write atomically (a temporary file beside the target, renamed by ``close``,
deleted by ``abort`` or an exception in a ``with`` block).
"""

import contextlib
import queue
import struct
import threading
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tifffile

from .atomic import AtomicFile
from .images import DEFAULT_MAX_PIXELS, ImageError, read_image

# GeoTIFF / GDAL tags copied into the label TIFF
GEOTIFF_TAGS = {
    33550: "ModelPixelScale",
    33922: "ModelTiepoint",
    34264: "ModelTransformation",
    34735: "GeoKeyDirectory",
    34736: "GeoDoubleParams",
    34737: "GeoAsciiParams",
    42112: "GDAL_METADATA",
    42113: "GDAL_NODATA",
}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic, BigTIFF


class DecodedRows:
    """A decoded BGR uint8 ``(H, W, 3)`` image as a row source (``read_rows`` gives views)."""

    def __init__(self, image: np.ndarray, source: Optional[dict] = None):
        self.image = image
        self.height, self.width = image.shape[:2]
        self.source = source or {}
        self.geotiff: List[tuple] = []

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.image[y0:y1]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Undecodable(Exception):
    """tifffile cannot read this TIFF lazily (the reason is the message)."""


def is_tiff(path: str) -> bool:
    """Whether the file starts with a TIFF or BigTIFF header."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def geotiff_tags(page: tifffile.TiffPage) -> List[tuple]:
    """The page's GeoTIFF/GDAL tags as ``tifffile`` ``extratags`` ``(code, dtype, count, value,
    writeonce)``."""
    tags = []
    for code in GEOTIFF_TAGS:
        tag = page.tags.get(code)
        if tag is not None:
            value = tag.value
            if isinstance(value, np.ndarray):
                value = tuple(value.tolist())
            tags.append((code, int(tag.dtype), tag.count, value, True))
    return tags


class TiffRows:
    """The first page of a TIFF as BGR uint8 rows, decoding only the strips/tiles asked for.

    ``source`` describes it as ``read_image`` does (plus ``lazy``, ``tiled``, ``bigtiff``);
    ``geotiff`` holds its GeoTIFF tags for ``TiffLabelWriter``. Raises ``_Undecodable`` (from
    ``__init__``) when the layout or codec is not supported here.
    """

    def __init__(self, path: str):
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as error:  # noqa: BLE001 - tifffile raises many kinds on bad files
            raise ImageError(f"corrupt or unreadable TIFF: {error}") from None
        try:
            self._setup(self._tif)
        except BaseException:
            self._tif.close()
            raise

    def _setup(self, tif: tifffile.TiffFile) -> None:
        if not len(tif.pages):
            raise ImageError("TIFF without images")
        page = tif.pages.first
        planes, depth, height, width, contig = page.shaped
        samples = page.samplesperpixel
        photometric = int(page.photometric)
        if page.dtype not in (np.uint8, np.uint16):
            raise _Undecodable(
                f"unsupported pixel type {page.dtype} (8- and 16-bit integer images are supported)"
            )
        if depth != 1:
            raise _Undecodable("volumetric TIFF (ImageDepth > 1)")
        if photometric == 1 and samples in (1, 2):  # MINISBLACK, optional alpha
            mode = "L" if samples == 1 else "LA"
        elif photometric == 2 and samples in (3, 4):  # RGB, optional alpha
            mode = "RGB" if samples == 3 else "RGBA"
        else:
            raise _Undecodable(
                f"TIFF photometric {page.photometric.name} with {samples} samples per pixel"
            )
        if (page.tags.valueof(274) or 1) != 1:
            raise _Undecodable("TIFF orientation other than top-left")
        if page.compression != 1:
            try:
                tifffile.TIFF.DECOMPRESSORS[page.compression]
                if page.predictor != 1:
                    tifffile.TIFF.UNPREDICTORS[page.predictor]
            except (KeyError, ImportError) as error:
                raise _Undecodable(str(error).strip("'\"")) from None
        self.page = page
        self.height, self.width, self.samples = height, width, samples
        self.geotiff = geotiff_tags(page)
        conversions = []
        if page.dtype == np.uint16:
            conversions.append("16-bit scaled to 8-bit (round(v / 257))")
        if samples < 3:
            conversions.append("grayscale replicated to 3 channels")
        if mode.endswith("A"):
            conversions.append("alpha channel dropped (not composited)")
        self.source: Dict[str, Any] = {
            "format": "TIFF",
            "mode": mode,
            "bit_depth": page.dtype.itemsize * 8,
            "conversions": conversions,
            "lazy": True,
            "tiled": bool(page.is_tiled),
            "bigtiff": bool(tif.is_bigtiff),
        }
        # one "segment row": a row of tiles, or one strip, in every sample plane
        if page.is_contiguous and page.planarconfig == 1:
            self._rows_per_segment = 0  # read raw rows straight from the file
        elif page.is_tiled:
            self._rows_per_segment = page.tilelength
            self._across = -(-width // page.tilewidth)
        else:
            self._rows_per_segment = min(page.rowsperstrip or height, height)
            self._across = 1
        self._down = -(-height // self._rows_per_segment) if self._rows_per_segment else 0
        self._planes = planes
        if self._rows_per_segment and len(page.dataoffsets) != planes * self._down * self._across:
            raise _Undecodable(f"unexpected TIFF segment count {len(page.dataoffsets)}")
        self._cache: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def _segment_row(self, index: int) -> np.ndarray:
        """Rows of segment row ``index`` as ``(rows, W, samples)`` in the file's dtype."""
        if self._cache[0] == index:
            return self._cache[1]
        self._cache = (-1, None)  # release the previous one before decoding the next
        page, fh = self.page, self._tif.filehandle
        top = index * self._rows_per_segment
        rows = min(self._rows_per_segment, self.height - top)
        out = np.zeros((rows, self.width, self.samples), page.dtype)
        for plane in range(self._planes):
            for column in range(self._across):
                segment = (plane * self._down + index) * self._across + column
                offset, size = page.dataoffsets[segment], page.databytecounts[segment]
                data = None
                if size:
                    fh.seek(offset)
                    data = fh.read(size)
                try:
                    decoded, (s, _, y, x, _), _ = page.decode(
                        data, segment, jpegtables=page.jpegtables
                    )
                except Exception as error:  # noqa: BLE001 - codec errors of many kinds
                    raise ImageError(f"corrupt TIFF data in segment {segment}: {error}") from None
                if decoded is None:  # empty segment: nodata
                    continue
                block = decoded[0, : rows - (y - top), : self.width - x]
                if self._planes > 1:
                    out[y - top : y - top + block.shape[0], x : x + block.shape[1], s] = block[
                        ..., 0
                    ]
                else:
                    out[y - top : y - top + block.shape[0], x : x + block.shape[1]] = block
        self._cache = (index, out)
        return out

    def _raw_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` as ``(n, W, samples)`` in the file's dtype."""
        page = self.page
        if not self._rows_per_segment:  # uncompressed and contiguous: read the bytes
            row_bytes = self.width * self.samples * page.dtype.itemsize
            fh = self._tif.filehandle
            fh.seek(page.dataoffsets[0] + y0 * row_bytes)
            data = fh.read((y1 - y0) * row_bytes)
            return np.frombuffer(data, page.dtype.newbyteorder(self._tif.byteorder)).reshape(
                y1 - y0, self.width, self.samples
            )
        out = np.empty((y1 - y0, self.width, self.samples), page.dtype)
        step = self._rows_per_segment
        for index in range(y0 // step, (y1 - 1) // step + 1):
            top = index * step
            block = self._segment_row(index)
            a, b = max(y0, top), min(y1, top + len(block))
            out[a - y0 : b - y0] = block[a - top : b - top]
        return out

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` as BGR uint8 ``(y1 - y0, W, 3)``."""
        if not 0 <= y0 < y1 <= self.height:
            raise ValueError(f"rows {y0}:{y1} outside the image's {self.height}")
        raw = self._raw_rows(y0, y1)
        if raw.dtype.itemsize == 2:
            raw = ((raw.astype(np.uint32) + 128) // 257).astype(np.uint8)
        if self.samples < 3:
            return np.repeat(raw[..., :1], 3, axis=2)
        return np.ascontiguousarray(raw[..., 2::-1])

    def close(self) -> None:
        self._cache = (-1, None)
        self._tif.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_rows(path: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """A row source for ``path`` (``height``, ``width``, ``read_rows(y0, y1)``, ``source``,
    ``geotiff``, ``close()``): ``TiffRows`` for a TIFF (any size), else ``DecodedRows`` of
    ``read_image(path, max_pixels)``. A TIFF that ``tifffile`` cannot decode here falls back to
    ``read_image`` within ``max_pixels``. Raises ``ImageError`` with the reason."""
    if is_tiff(path):
        try:
            return TiffRows(path)
        except _Undecodable as why:
            try:
                image, source = read_image(path, max_pixels)
            except ImageError as error:
                raise ImageError(f"{error} (and not readable in rows: {why})") from None
            return DecodedRows(image, source)
    image, source = read_image(path, max_pixels)
    return DecodedRows(image, source)


class _Aborted(Exception):
    pass


class _RowWriter(AtomicFile):
    """Rows ``(n, W)`` of class ids arrive top to bottom through ``write_rows(y0, rows)``,
    checked, then encoded by the subclass's ``_add_rows``; ``close`` checks that every row came,
    lets the subclass ``_finish`` and commits the file. Any error deletes it (``abort``).
    ``limit`` (set by the subclass): class ids are below it."""

    def __init__(self, path: str, height: int, width: int):
        if height < 1 or width < 1:
            raise ValueError(f"label map size {height}x{width}")
        super().__init__(path)
        self.height, self.width = height, width
        self.next_row = 0

    def _add_rows(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def write_rows(self, y0: int, rows: np.ndarray) -> None:
        """Rows ``y0 : y0 + n`` of class ids ``(n, W)``, in order."""
        try:
            self._check(y0, rows, self.limit)
            self._add_rows(rows)
        except BaseException:
            self.abort()
            raise

    def close(self) -> None:
        """Finish the file and rename it onto ``path``; incomplete -> ``ValueError`` (deleted)."""
        if self.done:
            return
        try:
            self._check_complete()
            self._finish()
            self.commit()
        except BaseException:
            self.abort()
            raise

    def _check(self, y0: int, rows: np.ndarray, limit: int) -> None:
        if self.done:
            raise ValueError(f"{self.path}: writer already closed")
        if y0 != self.next_row:
            raise ValueError(
                f"{self.path}: rows must come in order: got {y0}, expected {self.next_row}"
            )
        if rows.ndim != 2 or rows.shape[1] != self.width or y0 + len(rows) > self.height:
            raise ValueError(
                f"{self.path}: rows {rows.shape} at {y0} do not fit the "
                f"{self.height}x{self.width} map"
            )
        if rows.size and (int(rows.max()) >= limit or int(rows.min()) < 0):
            raise ValueError(f"{self.path}: class ids outside 0..{limit - 1}")
        self.next_row += len(rows)

    def _check_complete(self) -> None:
        if self.next_row != self.height:
            raise ValueError(f"{self.path}: {self.next_row} of {self.height} rows written")

    def abort(self) -> None:
        """Delete the temporary file; ``path`` is left as it was."""
        self.discard()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


class PngLabelWriter(_RowWriter):
    """A label PNG of ``height`` x ``width`` written as rows arrive, as ``encode_label_png``
    would encode the whole map: palette (``P``, 8-bit) when ``len(palette) <= 256``, else 16-bit
    grey. Memory: one zlib stream and at most ``IDAT_BYTES`` of output."""

    IDAT_BYTES = 1 << 20

    def __init__(
        self,
        path: str,
        height: int,
        width: int,
        palette: Sequence[Sequence[int]],
        level: int = 6,
    ):
        super().__init__(path, height, width)
        self.paletted = len(palette) <= 256
        self.limit = 256 if self.paletted else 65536
        try:
            self._file = open(self.tmp, "wb")
            if self.paletted:  # IHDR: width, height, bit depth, colour type, compression...
                header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
                colours = [tuple(int(v) for v in c) for c in palette] or [(0, 0, 0)]
                plte = bytes(v for colour in colours for v in colour)
            else:
                header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
            self._file.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header))
            if self.paletted:
                self._file.write(_png_chunk(b"PLTE", plte))
        except BaseException:
            self.abort()
            raise
        self._zlib = zlib.compressobj(level)
        self._pending: List[bytes] = []
        self._pending_bytes = 0

    def _flush(self, final: bool = False) -> None:
        if self._pending_bytes >= self.IDAT_BYTES or (final and self._pending):
            self._file.write(_png_chunk(b"IDAT", b"".join(self._pending)))
            self._pending, self._pending_bytes = [], 0

    def _add_rows(self, rows: np.ndarray) -> None:
        pixels = rows.astype(np.uint8 if self.paletted else ">u2")
        # each scanline: filter type 0 (None), then the samples
        lines = np.zeros((len(rows), 1 + pixels.shape[1] * pixels.itemsize), np.uint8)
        lines[:, 1:] = pixels.view(np.uint8).reshape(len(rows), -1)
        data = self._zlib.compress(lines.tobytes())
        if data:
            self._pending.append(data)
            self._pending_bytes += len(data)
        self._flush()

    def _finish(self) -> None:
        self._pending.append(self._zlib.flush())
        self._flush(final=True)
        self._file.write(_png_chunk(b"IEND", b""))
        self._file.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        super().abort()


class TiffLabelWriter(_RowWriter):
    """A tiled, deflate-compressed label TIFF of ``height`` x ``width`` written as rows arrive
    (``uint8`` ids with the palette as a colour map for <= 256 classes, else ``uint16``),
    with ``extratags`` (``geotiff_tags`` of the input: georeferencing kept). BigTIFF when the
    uncompressed map would pass 2 GiB.

    ``tifffile`` writes a page from an iterator of tiles that it pulls; rows are pushed here, so
    the write runs in a thread fed one row of tiles at a time through a bounded queue.
    Memory: about three rows of tiles (``tile[0] x W`` ids each).
    """

    def __init__(
        self,
        path: str,
        height: int,
        width: int,
        palette: Sequence[Sequence[int]],
        extratags: Sequence[tuple] = (),
        tile: Tuple[int, int] = (256, 256),
        level: int = 6,
    ):
        if tile[0] % 16 or tile[1] % 16 or min(tile) < 16:
            raise ValueError(f"TIFF tiles are multiples of 16, got {tile}")
        super().__init__(path, height, width)
        self.dtype = np.dtype(np.uint8 if len(palette) <= 256 else np.uint16)
        self.limit = 256 if self.dtype == np.uint8 else 65536
        self.tile = tuple(tile)
        self._band = np.zeros((tile[0], width), self.dtype)
        self._band_rows = 0
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: Optional[BaseException] = None
        options: Dict[str, Any] = dict(
            shape=(height, width),
            dtype=self.dtype,
            tile=self.tile,
            compression="zlib",
            compressionargs={"level": level},
            extratags=list(extratags),
            metadata=None,
        )
        if self.dtype == np.uint8:
            colormap = np.zeros((3, 256), np.uint16)
            for i, colour in enumerate(palette):
                colormap[:, i] = [int(v) * 257 for v in colour]
            options.update(photometric="palette", colormap=colormap)
        else:
            options.update(photometric="minisblack")
        bigtiff = height * width * self.dtype.itemsize > 2**31
        self._thread = threading.Thread(
            target=self._write, args=(bigtiff, options), name="tiff-label-writer", daemon=True
        )
        self._thread.start()

    def _tiles(self):
        while True:
            item = self._queue.get()
            if item is None:
                raise _Aborted()
            yield from item

    def _write(self, bigtiff: bool, options: dict) -> None:
        try:
            with tifffile.TiffWriter(self.tmp, bigtiff=bigtiff) as writer:
                writer.write(self._tiles(), **options)
        except BaseException as error:  # noqa: BLE001 - handed to the writing thread
            self._error = error

    def _put(self, item) -> None:
        while True:
            if self._error is not None or not self._thread.is_alive():
                raise OSError(f"{self.path}: TIFF writing failed: {self._error}")
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _send_band(self) -> None:
        th, tw = self.tile
        tiles = []
        for x in range(0, self.width, tw):
            tile = np.zeros((th, tw), self.dtype)  # the border tiles zero-padded
            part = self._band[:, x : x + tw]
            tile[:, : part.shape[1]] = part
            tiles.append(tile)
        self._put(tiles)
        self._band[:] = 0
        self._band_rows = 0

    def _add_rows(self, rows: np.ndarray) -> None:
        done = 0
        while done < len(rows):
            take = min(len(rows) - done, self.tile[0] - self._band_rows)
            self._band[self._band_rows : self._band_rows + take] = rows[done : done + take]
            self._band_rows += take
            done += take
            if self._band_rows == self.tile[0] or self.next_row - len(rows) + done == self.height:
                self._send_band()

    def _finish(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise OSError(f"{self.path}: TIFF writing failed: {self._error}")

    def abort(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # make room for the stop sign
                while True:
                    self._queue.get_nowait()
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=5)
            self._thread.join(timeout=30)
        super().abort()
