"""The items both loops of folder inference pass along: a task decoded (``Decoded``) or failed
before the model saw it (``Failed``), the batching rule (consecutive images of one size), and
video frames decoded in a stream (``FrameReader``). Imports no torch."""

import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from ann_seg.io import ImageError, read_image
from ann_seg.io.video import VideoError, read_frames

from .inputs import ImageTask
from .journal import input_identity

DEFAULT_WRITERS = 2


@dataclass
class Decoded:
    """A readable image: ``image`` (BGR, None when the pipelined loop needs it for nothing),
    its ``shape`` (what batches group by), ``info`` from ``read_image``, the seconds spent
    reading, the input's identity (for the journal) and, in the pipelined loop, ``data``: the
    test pipeline's ``{"inputs": tensor, "data_samples": SegDataSample}``."""

    index: int
    image: Optional[np.ndarray]
    shape: Tuple[int, ...]
    info: dict
    read_s: float
    identity: dict
    data: Optional[dict] = None

    def pin_memory(self) -> "Decoded":
        """Called by the DataLoader's pin-memory thread (``pin_memory=True``)."""
        if self.data is not None:
            self.data["inputs"] = self.data["inputs"].pin_memory()
        return self


@dataclass
class Failed:
    """An image reported as failed before the model saw it, with the reason."""

    index: int
    reason: str
    identity: dict

    def pin_memory(self) -> "Failed":
        return self


class FrameReader:
    """Video frames in the order they are asked for, decoded as a stream: one open
    ``read_frames`` iterator (the last video's) moves forward to the frame asked (decoding and
    dropping those between, what ``read_frames(start=k)`` does anyway) and is reopened only for
    an earlier frame or another video, so memory stays flat. Once frame ``k`` of a video
    cannot be decoded, its later frames fail without decoding (the file is read again only
    by a new ``FrameReader``)."""

    def __init__(self):
        self._path: Optional[str] = None
        self._frames: Optional[Iterator[Tuple[int, np.ndarray]]] = None
        self._next = 0
        self._broken: Dict[str, Tuple[int, str]] = {}  # video path -> (frame, reason)

    def read(self, task: ImageTask) -> np.ndarray:
        """Frame ``task.frame`` of ``task.path``, BGR uint8 (H, W, 3); raises ``VideoError``."""
        broken = self._broken.get(task.path)
        if broken is not None and task.frame >= broken[0]:
            if task.frame == broken[0]:
                raise VideoError(broken[1])
            raise VideoError(f"not decoded: the video stops decoding at frame {broken[0]}")
        if self._path != task.path or self._frames is None or task.frame < self._next:
            self.close()
            self._frames = read_frames(task.path, task.frame, info=task.source)
            self._path, self._next = task.path, task.frame
        try:
            for index, frame in self._frames:
                self._next = index + 1
                if index == task.frame:
                    return frame
        except VideoError as error:
            self._broken[task.path] = (self._next, str(error))
            self.close()
            if self._next < task.frame:  # an earlier frame is the first bad one
                raise VideoError(
                    f"not decoded: the video stops decoding at frame {self._next}"
                ) from None
            raise
        self.close()  # a clean end before the frame: the count was exact, so not expected
        self._broken[task.path] = (task.frame, f"{task.path}: frame {task.frame}: no such frame")
        raise VideoError(self._broken[task.path][1])

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()  # releases the decoder
        self._frames, self._path = None, None


VIDEO_FRAME_INFO = {"format": "video", "mode": "BGR", "bit_depth": 8, "conversions": []}


def decode_task(
    index: int,
    task: ImageTask,
    max_pixels: int,
    max_bytes: Optional[int],
    frames: Optional[FrameReader] = None,
) -> Union[Decoded, Failed]:
    """Read ``task``'s image (a video frame: through ``frames``, a ``FrameReader`` kept across
    calls; a new one each call without it), or say why it cannot be used."""
    start = time.perf_counter()
    identity = input_identity(task.path)  # before reading: a later change is seen next run
    if task.error is not None:
        return Failed(index, task.error, identity)
    if task.frame is not None:
        if task.source.width * task.source.height > max_pixels:
            size = f"{task.source.width}x{task.source.height}"
            return Failed(index, f"{task.path}: {size} frames exceed {max_pixels} pixels", identity)
        try:
            image = (frames or FrameReader()).read(task)
        except VideoError as error:
            return Failed(index, str(error), identity)
        info = dict(VIDEO_FRAME_INFO, conversions=[])
        return Decoded(index, image, image.shape, info, time.perf_counter() - start, identity)
    try:
        image, info = read_image(task.path, max_pixels, max_bytes)
    except ImageError as error:
        return Failed(index, str(error), identity)
    return Decoded(index, image, image.shape, info, time.perf_counter() - start, identity)


def inference_failure(error: BaseException) -> str:
    """The failure reason of an image the model (or the test pipeline) could not process."""
    return f"inference failed: {type(error).__name__}: {error}"


def equal_shape_batches(
    items: Iterable[Optional[Decoded]], batch_size: int, on_skip: Callable[[], None]
) -> Iterator[List[Decoded]]:
    """Consecutive decoded images of equal shape, ``batch_size`` at most: the batching rule of
    both loops. ``None`` items (images already reported as failed) call ``on_skip``."""
    pending: List[Decoded] = []
    for item in items:
        if item is None:
            on_skip()
            continue
        if pending and pending[0].shape != item.shape:
            yield pending
            pending = []
        pending.append(item)
        if len(pending) == batch_size:
            yield pending
            pending = []
    if pending:
        yield pending
