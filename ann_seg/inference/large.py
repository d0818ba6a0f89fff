"""Sliding-window inference of one image in bounded memory (``ann-seg infer --slide``).

When the predictor's test mode is a sliding window, each image is segmented at its native
resolution (``LoaderOptions.scale`` resizes it first) by ``tiles.slide_banded``: windows in
mmseg's order and batches, logits summed and averaged exactly as mmseg's ``slide_inference``
for one band of rows at a time, finished label rows streamed to the outputs. Peak memory: the
decoded image (none for a TIFF, read in rows by ``io.large_images.TiffRows``) plus one band
(``C x crop_h x W`` float32), not mmseg's ``C x H x W`` logits and count map.

Outputs: the label map as a PNG written row by row (``PngLabelWriter``), or for a TIFF input a
tiled TIFF keeping its GeoTIFF tags (``TiffLabelWriter``); ``.npy`` logits (float16) filled band
by band in a memory-mapped file; an overlay only for an image decoded whole (not planned for
TIFF inputs). NaN or infinite logits fail the image and write nothing.
"""

import contextlib
import os
import os.path as osp
import time
import zipfile
from typing import Callable, Iterator, List

import cv2
import numpy as np

from ann_seg.io import (
    AtomicFile,
    ImageError,
    Progress,
    atomic_write_bytes,
    atomic_write_with,
    encode_jpeg,
    render_overlay,
)
from ann_seg.io.large_images import DecodedRows, PngLabelWriter, TiffLabelWriter, open_rows

from .batches import Failed, decode_task, inference_failure
from .journal import input_identity
from .outdir import OutputStorageError, storage_errors
from .predictor import nonfinite_problem
from .tiles import ArrayRows, label_dtype, slide_banded, slide_windows

TIFF_EXTENSIONS = (".tif", ".tiff")
TILE_PROGRESS_MIN = 16  # windows: an image with fewer shows no progress of its own


class NonFiniteLogits(Exception):
    """Raised from the band callback to stop an image whose logits are not finite."""


class _NearestRows:
    """Label rows of ``source``'s ``(h, w)`` map upsampled to ``(height, width)`` as rows arrive, by
    ``cv2.INTER_NEAREST``'s rule (source index ``floor(i * src / dst)``)."""

    def __init__(self, source, height: int, width: int, emit: Callable):
        h, w, self.emit = source.height, source.width, emit
        self.src_rows = np.minimum((np.arange(height) * h) // height, h - 1)
        self.src_cols = np.minimum((np.arange(width) * w) // width, w - 1)
        self.next_row = 0

    def __call__(self, y0: int, rows: np.ndarray) -> None:
        end = int(np.searchsorted(self.src_rows, y0 + len(rows)))
        if end > self.next_row:
            picked = rows[self.src_rows[self.next_row : end] - y0][:, self.src_cols]
            self.emit(self.next_row, picked)
            self.next_row = end


def plan_label_path(stem_path: str, input_path: str) -> str:
    """The label file of an input in slide mode: a TIFF's labels are a TIFF (GeoTIFF tags
    kept), others a PNG."""
    tiff = osp.splitext(input_path)[1].lower() in TIFF_EXTENSIONS
    return stem_path + (".tif" if tiff else ".png")


@contextlib.contextmanager
def _logits_file(path: str, num_classes: int, rows) -> Iterator[np.ndarray]:
    """A float16 ``(C, H, W)`` array memory-mapped on a ``.npy`` file, filled band by band,
    committed atomically to ``path`` (``.npz``: then zipped into it, key ``logits``). The file
    is allocated whole first: a full disk is an ``OSError`` here, not a SIGBUS later."""
    shape = (num_classes, rows.height, rows.width)
    npz = not path.endswith(".npy")
    npy = AtomicFile(path, suffix=".npy.tmp" if npz else ".tmp")  # for .npz: a scratch file
    try:
        logits = np.lib.format.open_memmap(npy.tmp, mode="w+", dtype=np.float16, shape=shape)
        with open(npy.tmp, "r+b") as f:  # sparse so far: take the blocks now
            os.posix_fallocate(f.fileno(), 0, logits.offset + logits.nbytes)
        yield logits
        logits.flush()
        del logits
        if npz:

            def zip_npy(f) -> None:
                with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                    z.write(npy.tmp, "logits.npy")

            atomic_write_with(path, zip_npy)
        else:
            npy.commit()
    finally:
        npy.discard()  # an error, or the .npz's scratch file


def segment_large(runner, index: int, progress: Progress) -> None:
    """Segment ``runner.tasks[index]`` (``folder.FolderInference``) with the sliding window of
    its predictor; record or fail it as ``FolderInference.write`` does."""
    task = runner.tasks[index]
    identity = input_identity(task.path)
    if task.error is not None:
        runner.fail(index, task.error, identity)
        return
    start = time.perf_counter()
    if task.frame is not None:  # a video frame: decoded by the runner's streamed reader
        item = decode_task(index, task, runner.loader.max_pixels, None, runner.frames)
        if isinstance(item, Failed):
            runner.fail(index, item.reason, item.identity)
            return
        rows = DecodedRows(item.image, item.info)
    else:
        try:
            rows = open_rows(task.path, runner.loader.max_pixels)
        except ImageError as error:
            runner.fail(index, str(error), identity)
            return
    with rows:
        read_s = time.perf_counter() - start
        try:
            label_shape, counts, seconds = _slide(runner, task, rows, progress)
        except OutputStorageError:
            raise
        except NonFiniteLogits as problem:
            runner.fail(index, str(problem), identity)
            return
        except (ImageError, ValueError) as error:
            runner.fail(index, str(error), identity)
            return
        except Exception as error:  # noqa: BLE001 - report, go on with the other images
            runner.fail(index, inference_failure(error), identity)
            return
        runner.record(index, rows.source, label_shape, counts, (read_s, *seconds), identity)


def _slide(runner, task, rows, progress: Progress):
    """Run the window over ``rows`` into the task's outputs; ``((H, W), (infer_s, write_s))``."""
    predictor, loader, outputs = runner.predictor, runner.loader, runner.outputs
    crop, stride = predictor.slide
    height, width = rows.height, rows.width
    source = rows
    if loader.scale != 1.0:
        if not isinstance(rows, DecodedRows):
            raise ImageError("--scale needs the image decoded whole; this TIFF is read in rows")
        size = (max(1, round(width * loader.scale)), max(1, round(height * loader.scale)))
        source = ArrayRows(cv2.resize(rows.image, size, interpolation=cv2.INTER_LINEAR))
    if outputs.save_logits and source is not rows:
        raise ValueError("--save-logits with --scale: logits are kept at the native size only")
    if "overlay" in task.outputs and not isinstance(rows, DecodedRows):
        raise ImageError("an overlay needs the image decoded whole; this TIFF is read in rows")
    windows = len(slide_windows(source.height, source.width, crop, stride))
    label_path, num_classes = task.outputs["label"], len(predictor.classes)
    kept: List[np.ndarray] = []
    counts = np.zeros(num_classes, np.int64)
    start = time.perf_counter()
    with storage_errors(label_path), contextlib.ExitStack() as stack:
        if label_path.endswith(".tif"):
            writer = TiffLabelWriter(label_path, height, width, runner.palette, rows.geotiff)
        else:
            writer = PngLabelWriter(label_path, height, width, runner.palette)
        stack.enter_context(writer)  # committed last: the label map marks the image done
        logits = None
        if outputs.save_logits:
            logits = stack.enter_context(_logits_file(task.outputs["logits"], num_classes, rows))
        bar = stack.enter_context(
            Progress(windows, enabled=progress.active and windows >= TILE_PROGRESS_MIN)
        )

        def emit(y0: int, labels: np.ndarray) -> None:
            writer.write_rows(y0, labels)
            counts[:] += np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
            if "overlay" in task.outputs:
                kept.append(labels.astype(label_dtype(num_classes), copy=False))

        def check(y0: int, block: np.ndarray) -> None:
            problem = nonfinite_problem(block)
            if problem is not None:
                raise NonFiniteLogits(problem)
            if logits is not None:
                logits[:, y0 : y0 + block.shape[1]] = block

        sink = emit if source is rows else _NearestRows(source, height, width, emit)
        tiles = [0]

        def on_tile(done: int, total: int) -> None:
            bar.update(done - tiles[0])
            tiles[0] = done

        classes = slide_banded(
            source,
            predictor.forward_tiles,
            crop,
            stride,
            sink,
            batch_size=loader.batch_size,
            emit_logits=check,
            on_tile=on_tile,
        )
        if classes != num_classes:
            raise ValueError(f"the model gives {classes} classes, its metadata names {num_classes}")
        infer_s = time.perf_counter() - start
        if kept:
            overlay = render_overlay(
                rows.image, np.concatenate(kept), runner.palette, outputs.opacity
            )
            with storage_errors(task.outputs["overlay"]):
                atomic_write_bytes(task.outputs["overlay"], encode_jpeg(overlay))
    pixels = {str(i): int(n) for i, n in enumerate(counts) if n}
    return (height, width), pixels, (infer_s, time.perf_counter() - start - infer_s)
