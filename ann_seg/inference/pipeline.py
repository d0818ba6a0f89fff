"""The pipelined loop of folder inference (``ann-seg infer --workers N``).

Three stages overlap: ``torch.utils.data.DataLoader`` workers read and decode each image
(``ann_seg.io.read_image``) and run the config's test pipeline on it as
``mmseg.apis.inference_model`` does (``LoadImageFromNDArray``, then the rest of
``test_pipeline`` without ``LoadAnnotations``); the main thread groups consecutive images of
equal size into batches exactly as the sequential loop does and runs ``model.test_step`` on
them (the same call ``inference_model`` makes on the same tensors: identical labels); a few
writer threads (``concurrent.futures.ThreadPoolExecutor``) encode and write the outputs, then
append the journal line. At most ``writers * WRITES_PER_WRITER`` results wait for a writer and
the loader prefetches ``2 * workers`` images, so memory stays flat however large the folder.

An image that cannot be read (or that the test pipeline refuses) is reported with the same
reason as in the sequential loop. On CUDA the loader pins its tensors and the copies to the
device are ``non_blocking``.

``workers=0`` runs the same stages with the reading in the main thread (the DataLoader's
in-process mode). Which loop ``run_inference`` uses: ``folder.LoaderOptions.pipelined``.
"""

import copy
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import (
    Any,
    Callable,
    Deque,
    Iterator,
    List,
    Optional,
    Sequence,
    Union,
)

import torch
from mmengine.dataset import Compose
from torch.utils.data import DataLoader, Dataset

from ann_seg.io import Progress

from .batches import (
    DEFAULT_WRITERS,
    Decoded,
    Failed,
    FrameReader,
    decode_task,
    equal_shape_batches,
    inference_failure,
)
from .inputs import ImageTask

WRITES_PER_WRITER = 4  # results queued per writer thread before the forward loop waits


def inference_pipeline(cfg) -> List[dict]:
    """``cfg.test_pipeline`` as ``inference_model`` runs it on an array: without
    ``LoadAnnotations``, the first step ``LoadImageFromNDArray``."""
    steps = [copy.deepcopy(t) for t in cfg.test_pipeline if t.get("type") != "LoadAnnotations"]
    if not steps:
        raise ValueError(f"the config's test_pipeline has no steps: {cfg.test_pipeline}")
    steps[0]["type"] = "LoadImageFromNDArray"
    return steps


class PreprocessDataset(Dataset):
    """Item ``i``: ``tasks[todo[i]]`` decoded and through the test pipeline (``Decoded``), or
    ``Failed``. Runs in the DataLoader's workers."""

    def __init__(
        self,
        tasks: Sequence[ImageTask],
        todo: Sequence[int],
        pipeline_cfg: List[dict],
        max_pixels: int,
        max_bytes: Optional[int],
        keep_image: bool,
    ):
        self.tasks, self.todo = tasks, list(todo)
        self.max_pixels, self.max_bytes, self.keep_image = max_pixels, max_bytes, keep_image
        self.pipeline = Compose(pipeline_cfg)  # built here: forked workers inherit it
        # video frames: each worker streams the video, keeping the frames it is given
        self.frames = FrameReader()

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int) -> Union[Decoded, Failed]:
        index = self.todo[i]
        start = time.perf_counter()
        task = self.tasks[index]
        item = decode_task(index, task, self.max_pixels, self.max_bytes, self.frames)
        if isinstance(item, Failed):
            return item
        try:
            data = self.pipeline(dict(img=item.image))
        except Exception as error:  # noqa: BLE001 - reported as the sequential loop does
            return Failed(index, inference_failure(error), item.identity)
        item.data = {"inputs": data["inputs"], "data_samples": data["data_samples"]}
        if not self.keep_image:
            item.image = None  # not sent back to the main process
        item.read_s = time.perf_counter() - start
        return item


def _as_is(item):
    return item


def collate(batch: Sequence[Decoded], device: str) -> dict:
    """The ``model.test_step`` input of ``batch`` (as ``inference_model`` builds it), its
    tensors on ``device`` (``non_blocking``: pinned on CUDA)."""
    return {
        "inputs": [item.data["inputs"].to(device, non_blocking=True) for item in batch],
        "data_samples": [item.data["data_samples"] for item in batch],
    }


def make_loader(dataset: PreprocessDataset, workers: int, pin_memory: bool = False) -> DataLoader:
    """Items in order, one at a time (the main thread batches them), ``2 * workers`` ahead."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
    )


def run_pipelined(
    stages: Any,
    todo: Sequence[int],
    batch_size: int,
    progress: Progress,
    workers: int,
    writers: int = DEFAULT_WRITERS,
    pin_memory: bool = False,
) -> None:
    """Segment the tasks ``todo`` of ``stages`` (a ``FolderInference``: its ``tasks``,
    ``fail``, ``forward``, ``write``, ``pipeline_dataset``) with the three stages overlapped;
    batches as ``FolderInference.run``."""
    if writers < 1:
        raise ValueError(f"writers must be >= 1, got {writers}")
    loader = make_loader(stages.pipeline_dataset(todo), workers, pin_memory)
    iterator = iter(loader)  # workers fork here, before any writer thread exists
    in_flight: Deque[Future] = deque()
    limit = writers * WRITES_PER_WRITER

    def decoded(loaded):
        for item in loaded:
            if isinstance(item, Failed):
                stages.fail(item.index, item.reason, item.identity)
                item = None
            yield item

    try:
        with ThreadPoolExecutor(writers, thread_name_prefix="ann_seg-writer") as pool:

            def submit(write: Callable, *args) -> None:
                while len(in_flight) >= limit:
                    in_flight.popleft().result()  # re-raises what a writer did not catch
                in_flight.append(pool.submit(write, *args))

            for batch in equal_shape_batches(decoded(iterator), batch_size, progress.update):
                for item, result, seconds in stages.forward(batch):
                    submit(stages.write, item, result, seconds)
                progress.update(len(batch))
            while in_flight:
                in_flight.popleft().result()
    finally:
        shutdown_workers(iterator)


def shutdown_workers(iterator: Iterator) -> None:
    """Stop a DataLoader iterator's worker processes now. Dropping the iterator is not enough
    after an interrupt: the traceback keeps the frames that hold it, and so the workers, alive
    until the exception is gone; a worker whose parent died lingered holding its pipes."""
    shutdown = getattr(iterator, "_shutdown_workers", None)  # what its __del__ calls
    if shutdown is not None:
        shutdown()


def with_no_grad_test_step(model: torch.nn.Module, data: dict):
    """``model.test_step(data)`` without autograd, as ``inference_model``."""
    with torch.no_grad():
        return model.test_step(data)
