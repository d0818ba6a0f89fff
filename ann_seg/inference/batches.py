"""The items both loops of folder inference pass along: a task decoded (``Decoded``) or failed
before the model saw it (``Failed``), and the batching rule (consecutive images of one size).
Imports no torch."""

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from ann_seg.io import ImageError, read_image

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


def decode_task(
    index: int, task: ImageTask, max_pixels: int, max_bytes: Optional[int]
) -> Union[Decoded, Failed]:
    """Read ``task``'s image, or say why it cannot be used."""
    start = time.perf_counter()
    identity = input_identity(task.path)  # before reading: a later change is seen next run
    if task.error is not None:
        return Failed(index, task.error, identity)
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
