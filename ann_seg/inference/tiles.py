"""Sliding-window inference in bounded memory: mmseg's slide mode, one band of rows at a time.

mmseg 1.2.2's ``EncoderDecoder.slide_inference`` keeps the logits of the whole image
(``C x H x W`` float32) and a count map: 20 GB for a 16000 x 16000 image with 19 classes.
``slide_banded`` visits the same windows in the same order and adds the same tile logits in the
same order (so the float32 sums are bit-identical), but holds only the rows that a window can
still reach: at most ``min(crop_h, H)`` rows of ``C x W`` float32. Rows no window can reach any
more are divided by their window count, argmaxed and handed to ``emit`` top to bottom, then
dropped. Pixels come from a ``RowSource`` (``read_rows(y0, y1)``), so the image itself need not
be decoded whole either (``ann_seg.io.large_images.open_rows``).

Numpy only: the model is behind ``forward_tiles`` (``Predictor.forward_tiles``).
"""

from dataclasses import dataclass
from numbers import Integral
from typing import Callable, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from .inputs import InferenceInputError

# (N, h, w, 3) BGR uint8 crops -> (N, C, h, w) float32 logits (mmseg's encode_decode per crop)
ForwardTiles = Callable[[np.ndarray], np.ndarray]
ARGMAX_BYTES = 2**24  # logits per argmax call (it copies a strided block): 16 MiB


class RowSource(Protocol):
    """Pixels of an image ``height`` x ``width``, read top to bottom in row ranges. A source
    with an ``image`` attribute holding the whole decoded ``(H, W, 3)`` array (``ArrayRows``,
    ``ann_seg.io.large_images.DecodedRows``) is sliced directly instead."""

    height: int
    width: int

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` as BGR uint8 ``(y1 - y0, width, 3)``."""
        ...


class ArrayRows:
    """A decoded BGR uint8 ``(H, W, 3)`` image as a ``RowSource`` (views, no copies)."""

    def __init__(self, image: np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected a BGR uint8 (H, W, 3) image, got {image.dtype} {image.shape}"
            )
        self.image = image
        self.height, self.width = image.shape[:2]

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.image[y0:y1]


@dataclass(frozen=True)
class Window:
    """One crop ``[y1:y2, x1:x2]``; ``row`` is its index in mmseg's ``h_idx`` loop."""

    row: int
    y1: int
    y2: int
    x1: int
    x2: int


def _pair(value, name: str) -> Tuple[int, int]:
    if isinstance(value, Integral) and not isinstance(value, bool):
        value = (value, value)
    try:
        h, w = value
    except (TypeError, ValueError):
        h = w = None
    ok = all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in (h, w))
    if not ok:
        raise InferenceInputError(
            f"slide window: {name} must be one or two positive integers (H, W), got {value!r}"
        )
    return int(h), int(w)


def check_window(
    crop: Union[int, Sequence[int]], stride: Union[int, Sequence[int]]
) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``((crop_h, crop_w), (stride_h, stride_w))``; ``InferenceInputError`` (a ``ValueError``)
    unless both are positive integers with stride <= crop on each side."""
    crop_hw, stride_hw = _pair(crop, "crop"), _pair(stride, "stride")
    if stride_hw[0] > crop_hw[0] or stride_hw[1] > crop_hw[1]:
        raise InferenceInputError(
            f"slide window: stride {stride_hw} is larger than the crop {crop_hw} "
            "(pixels between windows would get no logits)"
        )
    return crop_hw, stride_hw


def slide_windows(
    height: int, width: int, crop: Sequence[int], stride: Sequence[int]
) -> List[Window]:
    """mmseg's windows in its order (rows outer, columns inner): ``h_grids`` x ``w_grids`` with
    ``grids = max(size - crop + stride - 1, 0) // stride + 1``, the last one shifted back to end
    at the border, a crop larger than the image cut to the image."""
    (h_crop, w_crop), (h_stride, w_stride) = check_window(crop, stride)
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            windows.append(Window(h_idx, max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned type holding ids ``0 .. num_classes - 1``."""
    return np.dtype(
        np.uint8 if num_classes <= 256 else np.uint16 if num_classes <= 65536 else np.uint32
    )


def _shift_rows(buffer: np.ndarray, shift: int, keep: int) -> None:
    """Move rows ``shift:shift + keep`` of a C-contiguous ``buffer`` (rows: axis 0) to ``0:keep``
    in place, in chunks whose memory does not overlap (numpy copies an overlapping block, or
    one whose address range merely interleaves, through a temporary)."""
    if shift == 0 or keep == 0:
        return
    for start in range(0, keep, shift):
        stop = min(start + shift, keep)
        buffer[start:stop] = buffer[start + shift : stop + shift]


class _PixelBand:
    """The source rows of the current window row, read once each (rows shared by consecutive
    window rows are kept, not read again)."""

    def __init__(self, source: RowSource, rows: int):
        self.source = source
        self.y0 = self.y1 = 0
        # a decoded image (ArrayRows, io's DecodedRows): slice it, no copies
        self.direct = isinstance(getattr(source, "image", None), np.ndarray)
        self.buffer = None if self.direct else np.empty((rows, source.width, 3), np.uint8)

    def crop(self, y1: int, y2: int, x1: int, x2: int) -> np.ndarray:
        if self.direct:
            return self.source.image[y1:y2, x1:x2]
        if y1 != self.y0 or y2 > self.y1:
            keep = max(self.y1 - y1, 0)
            _shift_rows(self.buffer, y1 - self.y0, keep)
            start = max(self.y1, y1)
            rows = self.source.read_rows(start, y2)
            expected = (y2 - start, self.source.width, 3)
            if rows.shape != expected or rows.dtype != np.uint8:
                raise ValueError(
                    f"read_rows({start}, {y2}) gave {rows.dtype} {rows.shape}, expected uint8 "
                    f"{expected}"
                )
            self.buffer[start - y1 : y2 - y1] = rows
            self.y0, self.y1 = y1, y2
        return self.buffer[y1 - self.y0 : y2 - self.y0, x1:x2]


def slide_banded(
    source: Union[np.ndarray, RowSource],
    forward_tiles: ForwardTiles,
    crop: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int]],
    emit: Callable[[int, np.ndarray], None],
    *,
    batch_size: int = 1,
    emit_logits: Optional[Callable[[int, np.ndarray], None]] = None,
    on_tile: Optional[Callable[[int, int], None]] = None,
) -> int:
    """Segment ``source`` (a BGR uint8 ``(H, W, 3)`` array or a ``RowSource``) with mmseg's
    sliding window, holding the logits of one band of rows only.

    ``forward_tiles((N, h, w, 3) uint8) -> (N, C, h, w) float32`` is called on up to
    ``batch_size`` windows at a time (``h, w = min(crop, image size)``). Label rows are handed
    over top to bottom exactly once: ``emit(y0, labels)`` with ``labels`` ``(n, W)`` class ids
    (``label_dtype(C)``) for rows ``y0 : y0 + n``, and, when given, ``emit_logits(y0, logits)``
    with ``logits`` ``(C, n, W)`` float32 (mmseg's ``seg_logits`` for those rows; a view into the
    band, valid during the call only: copy it to keep it). ``on_tile(done, total)`` after each
    batch. Returns ``C``. Memory: ``C x min(crop_h, H) x W`` float32 plus one window row of
    pixels (none for an array) and one batch of tiles and logits.
    """
    if isinstance(source, np.ndarray):
        source = ArrayRows(source)
    height, width = int(source.height), int(source.width)
    if height < 1 or width < 1:
        raise InferenceInputError(f"slide window: empty image {height}x{width}")
    if not (
        isinstance(batch_size, Integral) and not isinstance(batch_size, bool) and batch_size > 0
    ):
        raise InferenceInputError(
            f"slide window: batch_size must be a positive integer, got {batch_size!r}"
        )
    windows = slide_windows(height, width, crop, stride)
    (h_crop, w_crop), _ = check_window(crop, stride)
    tile_h, tile_w = min(h_crop, height), min(w_crop, width)
    band_rows = tile_h
    # mmseg's count map is the outer product of the windows per row and per column
    row_count = np.zeros(height, np.float32)
    col_count = np.zeros(width, np.float32)
    for i, w in enumerate(windows):
        if i == 0 or windows[i - 1].row != w.row:  # first window of its row
            row_count[w.y1 : w.y2] += 1
        if w.row == 0:
            col_count[w.x1 : w.x2] += 1

    pixels = _PixelBand(source, band_rows)
    acc: Optional[np.ndarray] = None  # (C, band_rows, W) float32 sums for rows band_y0...
    state = {"band_y0": 0, "y2": 0, "row": 0, "classes": 0}  # y2: rows below are still 0

    def finish_rows(y_end: int) -> None:
        """Emit rows ``band_y0:y_end`` (no window still to come reaches them) and drop them."""
        band_y0 = state["band_y0"]
        n = y_end - band_y0
        if n <= 0:
            return
        block = acc[:, :n]
        np.divide(block, row_count[band_y0:y_end, None] * col_count[None, :], out=block)
        labels = np.empty((n, width), label_dtype(state["classes"]))
        step = max(1, ARGMAX_BYTES // (4 * state["classes"] * width))
        for r in range(0, n, step):
            labels[r : r + step] = block[:, r : r + step].argmax(axis=0)
        if emit_logits is not None:
            emit_logits(band_y0, block)
        emit(band_y0, labels)
        filled = state["y2"] - band_y0
        keep = max(filled - n, 0)
        for plane in acc:  # one class at a time: row blocks of one plane never interleave
            _shift_rows(plane, n, keep)
        acc[:, keep:filled] = 0
        state["band_y0"] = y_end

    total = len(windows)
    batch = np.empty((min(batch_size, total), tile_h, tile_w, 3), np.uint8)
    for start in range(0, total, batch_size):
        group = windows[start : start + batch_size]
        for k, w in enumerate(group):
            batch[k] = pixels.crop(w.y1, w.y2, w.x1, w.x2)
        logits = forward_tiles(batch[: len(group)])
        expected = (len(group), tile_h, tile_w)
        if (
            getattr(logits, "ndim", 0) != 4
            or logits.shape[0] != expected[0]
            or logits.shape[2:] != expected[1:]
        ):
            raise ValueError(
                f"forward_tiles returned shape {getattr(logits, 'shape', None)}, expected "
                f"({expected[0]}, C, {tile_h}, {tile_w})"
            )
        logits = np.asarray(logits, np.float32)
        if acc is None:
            state["classes"] = logits.shape[1]
            acc = np.zeros((state["classes"], band_rows, width), np.float32)
        elif logits.shape[1] != state["classes"]:
            raise ValueError(
                f"forward_tiles returned {logits.shape[1]} classes after {state['classes']}"
            )
        for k, w in enumerate(group):
            if w.row != state["row"]:  # rows above this window row are final
                finish_rows(w.y1)
                state["row"] = w.row
            y0 = state["band_y0"]
            acc[:, w.y1 - y0 : w.y2 - y0, w.x1 : w.x2] += logits[k]
            state["y2"] = max(state["y2"], w.y2)
        del logits
        if on_tile is not None:
            on_tile(min(start + batch_size, total), total)
    finish_rows(height)
    return state["classes"]


def slide_full(
    image: np.ndarray,
    forward_tiles: ForwardTiles,
    crop: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int]],
    *,
    batch_size: int = 1,
    want_logits: bool = False,
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``slide_banded`` collected into a whole ``(H, W)`` label map and, with ``want_logits``,
    ``(C, H, W)`` float32 logits (then memory is mmseg's again: for images that fit)."""
    height, width = image.shape[:2]
    out = {}

    def keep_labels(y0: int, rows: np.ndarray) -> None:
        if "label" not in out:
            out["label"] = np.empty((height, width), rows.dtype)
        out["label"][y0 : y0 + len(rows)] = rows

    def keep_logits(y0: int, block: np.ndarray) -> None:
        if "logits" not in out:
            out["logits"] = np.empty((block.shape[0], height, width), np.float32)
        out["logits"][:, y0 : y0 + block.shape[1]] = block

    slide_banded(
        image,
        forward_tiles,
        crop,
        stride,
        keep_labels,
        batch_size=batch_size,
        emit_logits=keep_logits if want_logits else None,
    )
    return out["label"], out.get("logits")
