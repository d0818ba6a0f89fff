"""Segment images, folders and path lists (``ann-seg infer``) with any predictor
(``predictor.Predictor``: the PyTorch model, ``pytorch.run_inference``, or an exported one,
``backends``). Imports no torch.

What this adds around a model, and what ``MMSegInferencer`` lacks: recursive folders and path
lists with outputs named after (and mirroring) the input tree, robust image decoding with a
per-file failure report, a journal of finished images (re-runs skip them), and atomic writes.

Output layout under ``out_dir`` (``<name>`` is the image's path relative to the input root,
with its extension; see ``inputs`` for the exact rule, e.g. ``a.png`` -> ``labels/a.png.png``)::

    labels/<name>.png     class ids as pixel values: palette ('P') PNG, or 16-bit grey PNG
                          when there are more than 256 classes
    overlays/<name>.jpg   with ``overlay=True``: colour overlay of the label map on the image
    logits/<name>.npy     with ``save_logits='npy'``: float16 (C, H, W); '.npz': compressed,
                          key ``logits``
    journal.jsonl         one line per finished image, appended once its outputs are in place
                          (``journal``); rank k of a distributed run: journal.rank<k>.jsonl
    summary.json          rebuilt from the journal: per-image class-pixel counts, sizes,
                          timings; failures with reasons; the model's ``fingerprint``
    infer.lock            while a run works here: its pid, host and start (``outdir``)

Videos (``clip.mp4`` in the input): every frame is a task (``inputs.video_tasks``) with its
journal line and ``labels/clip.mp4.frames/<frame:06d>.png``; once all are done
``labels/clip.mp4.mkv`` (lossless palette colours, ``ann_seg.io.read_label_video``) and, with
``overlay=True``, ``overlays/clip.mp4.mp4`` are assembled from them (``assemble_video``), the
video gets a journal line and the frame PNGs go (``OutputOptions.keep_frames`` keeps them).

Decoding is ``ann_seg.io.read_image``'s; images it refuses are reported in the summary's
``failures`` with the reason and the run goes on.

Loops: the sequential one (one thread: read, forward, write), or the pipelined one
(``pipeline``: reader processes and writer threads around the forward; the same labels).
Across processes and machines: ``distributed`` (one shard per rank, merged summary).

When things go wrong:

* another model: a re-run skips an image only if the journal says the same model made it
  (``fingerprint``: config, checkpoint content, test_cfg, speed); outputs of another model
  are segmented again, or refused (``OutputOptions.on_model_change='refuse'``:
  ``ModelChangedError``), so the summary never names a model that did not make its labels;
* the output folder is checked and locked before the model loads (``outdir``): a file, an
  unwritable folder, a journal or summary that is a folder raise ``OutputDirError``, a second
  run on it ``OutDirBusyError`` (rank 0 of a distributed run holds the lock);
* SIGTERM stops every loop as SIGINT does (``ann_seg.io.interrupts``): DataLoader workers
  and writer threads end, temporary files go, summary.json is rebuilt from the journal,
  ``Terminated`` is raised;
* a full disk (or quota, read-only file system) stops the run with ``OutputStorageError``
  naming the path and the free space; the journal stays whole and nothing is recorded as
  failed, so a re-run finishes the work;
* an image whose logits hold NaN or infinity is failed (``non-finite logits``), no label map
  is written from it; journal lines of the wrong types are ignored and counted like torn ones.
"""

import contextlib
import os
import os.path as osp
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ann_seg.io import (
    DEFAULT_MAX_PIXELS,
    Progress,
    VideoError,
    atomic_write_bytes,
    class_pixel_counts,
    encode_jpeg,
    encode_label_png,
    encode_logits,
    read_label_png,
    render_overlay,
)
from ann_seg.io.interrupts import Terminated, termination_as_interrupt
from ann_seg.io.video import LabelVideoWriter, OverlayVideoWriter, read_frames

from .batches import (
    DEFAULT_WRITERS,
    Decoded,
    Failed,
    FrameReader,
    decode_task,
    equal_shape_batches,
    inference_failure,
)
from .distributed import (
    DEFAULT_TIMEOUT_S,
    RankGroup,
    RankInfo,
    incomplete_note,
    rank_info,
    shard,
    warn,
)
from .fingerprint import ModelChangedError, describe_change
from .inputs import (
    FRAMES_SUFFIX,
    LABEL_DIR,
    LOGITS_DIR,
    OVERLAY_DIR,
    ImageTask,
    InferenceInputError,
    collect_inputs,
)
from .journal import (
    SUMMARY_NAME,
    Journal,
    input_identity,
    journal_name,
    read_journals,
    rebuild_summary,
    summarize,
)
from .large import plan_label_path, segment_large
from .outdir import (
    LOCK_NAME,
    OutDirLock,
    OutputStorageError,
    check_out_dir,
    describe_holder,
    storage_errors,
)
from .predictor import Prediction, Predictor

DEFAULT_OUT_DIR = "outputs/infer"
LOGIT_FORMATS = ("npy", "npz")
MODEL_CHANGE_ACTIONS = ("redo", "refuse")


def _plan_outputs(task: ImageTask, out_dir: str, overlay: bool, save_logits: Optional[str]) -> None:
    parts = task.out_stem.split("/")
    task.outputs = {"label": osp.join(out_dir, LABEL_DIR, *parts) + ".png"}
    if overlay and task.frame is None:  # a video's overlay is a video (``_video_outputs``)
        task.outputs["overlay"] = osp.join(out_dir, OVERLAY_DIR, *parts) + ".jpg"
    if save_logits:
        task.outputs["logits"] = osp.join(out_dir, LOGITS_DIR, *parts) + f".{save_logits}"


def _plan_slide_outputs(tasks: Sequence[ImageTask]) -> None:
    """Slide mode: a TIFF's labels are a TIFF (its GeoTIFF tags kept) and, read in rows, it
    gets no overlay (``large``)."""
    for task in tasks:
        stem = osp.splitext(task.outputs["label"])[0]
        task.outputs["label"] = plan_label_path(stem, task.path)
        if task.outputs["label"].endswith(".tif"):
            task.outputs.pop("overlay", None)


def _mark_output_conflicts(tasks: Sequence[ImageTask], out_dir: str) -> None:
    """Fail upfront a task whose output would lie in a folder that is another task's output
    file (input ``x.png`` and folder ``x.png.png/``): names never share a file, but may meet so."""
    owners = {path: task.name for task in tasks for path in task.outputs.values()}
    for task in tasks:
        for path in task.outputs.values():
            parent = osp.dirname(path)
            while len(parent) > len(out_dir) and parent not in owners:
                parent = osp.dirname(parent)
            if parent in owners and task.error is None:
                task.error = (
                    f"output name conflict: {osp.relpath(parent, out_dir)} is the output of "
                    f"{owners[parent]}"
                )


def _is_finished(task: ImageTask, out_dir: str, journal: Journal) -> bool:
    """The journal's latest entry for the task is ``done``, from an input of the same size and
    mtime, with the outputs planned now, all of which exist (the model: ``_plan_work``)."""
    entry = journal.previous_done(task.name, input_identity(task.path))
    if entry is None:
        return False
    written = entry.get("outputs") or {}
    return all(
        written.get(kind) == osp.relpath(path, out_dir) and osp.isfile(path)
        for kind, path in task.outputs.items()
    )


def _save(path: str, data: bytes) -> None:
    with storage_errors(path):
        atomic_write_bytes(path, data)


@dataclass
class OutputOptions:
    """What is written per image, and what happens to outputs already there: ``force``
    segments every image again; otherwise images the journal records as done by the same
    model are skipped, and those another model made are segmented again
    (``on_model_change='redo'``) or refused (``'refuse'``: ``ModelChangedError``)."""

    overlay: bool = False
    opacity: float = 0.5
    save_logits: Optional[str] = None
    force: bool = False
    on_model_change: str = "redo"
    keep_frames: bool = False  # videos: keep labels/<video>.frames/<frame>.png

    def __post_init__(self):
        if not 0.0 < self.opacity <= 1.0:
            raise InferenceInputError(f"opacity must be in (0, 1], got {self.opacity}")
        if self.save_logits not in (None, *LOGIT_FORMATS):
            raise InferenceInputError(
                f"save_logits must be one of {LOGIT_FORMATS}, got {self.save_logits!r}"
            )
        if self.on_model_change not in MODEL_CHANGE_ACTIONS:
            raise InferenceInputError(
                f"on_model_change must be one of {MODEL_CHANGE_ACTIONS}, "
                f"got {self.on_model_change!r}"
            )


@dataclass
class LoaderOptions:
    """What is read and how: ``recursive`` and ``extensions`` for folders, ``max_pixels`` and
    ``max_bytes`` per image (``read_image``), ``batch_size`` consecutive images of equal size
    per forward, and the loop: ``pipeline`` (default: ``workers > 0``) runs ``workers``
    DataLoader processes and ``writers`` threads around the forward (``pipeline``), else the
    sequential loop. ``scale``: with a sliding window, images are segmented at ``scale`` times
    their size (default 1: native; labels come back at the input's size)."""

    batch_size: int = 1
    workers: int = 0
    writers: int = DEFAULT_WRITERS
    pipeline: Optional[bool] = None
    recursive: bool = False
    extensions: Optional[Sequence[str]] = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: Optional[int] = None
    scale: float = 1.0

    def __post_init__(self):
        if not self.scale > 0:
            raise InferenceInputError(f"scale must be > 0, got {self.scale}")
        if self.batch_size < 1:
            raise InferenceInputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.workers < 0 or self.writers < 1:
            raise InferenceInputError(
                f"need workers >= 0 and writers >= 1, got {self.workers}, {self.writers}"
            )

    @property
    def pipelined(self) -> bool:
        return self.workers > 0 if self.pipeline is None else self.pipeline


@dataclass
class DistributedOptions:
    """``launcher`` ``pytorch`` (torchrun) or ``slurm``: this process is one rank of a
    distributed run (``distributed``); rank 0 waits at most ``timeout`` seconds for the
    others to join and to finish."""

    launcher: str = "none"
    timeout: float = DEFAULT_TIMEOUT_S


class FolderInference:
    """Segment a list of ``ImageTask`` s with one predictor (``predictor.Predictor``: the
    PyTorch model or an exported one) in three stages: ``preprocess`` (decode, or report the
    image as failed), ``forward`` (a batch of same-size images through the predictor; a failed
    batch is retried image by image) and ``write`` (logits, overlay, then the label map;
    thread-safe). ``run`` chains them in one thread, ``pipeline.run_pipelined`` overlaps them
    (PyTorch only). ``records`` and ``failures`` collect the per-image results by task index;
    each is appended to ``journal`` (if given) once final."""

    def __init__(
        self,
        predictor: Predictor,
        tasks: List[ImageTask],
        out_dir: str,
        outputs: OutputOptions,
        loader: Optional[LoaderOptions] = None,
        journal: Optional[Journal] = None,
    ):
        self.predictor, self.tasks, self.out_dir = predictor, tasks, out_dir
        self.outputs, self.loader, self.journal = outputs, loader or LoaderOptions(), journal
        self.palette = predictor.palette
        self.num_classes = len(predictor.classes)
        self.records: Dict[int, dict] = {}
        self.failures: Dict[int, dict] = {}
        self.frames = FrameReader()  # video frames, streamed (the sequential loop)

    def fail(self, index: int, reason: str, identity: Optional[dict] = None) -> None:
        task = self.tasks[index]
        self.failures[index] = {"name": task.name, "input": task.path, "reason": reason}
        if self.journal is not None:
            identity = identity or input_identity(task.path)
            self.journal.add(dict(self.failures[index], status="failed"), identity)

    def preprocess(self, index: int) -> Optional[Decoded]:
        task, loader = self.tasks[index], self.loader
        item = decode_task(index, task, loader.max_pixels, loader.max_bytes, self.frames)
        if isinstance(item, Failed):
            self.fail(index, item.reason, item.identity)
            return None
        return item

    def pipeline_dataset(self, todo: Sequence[int]):
        """The pipelined loop's reading stage for the tasks ``todo`` (``pipeline``)."""
        keep_image = any("overlay" in self.tasks[i].outputs for i in todo)  # frames: none
        return self.predictor.pipeline_dataset(self.tasks, todo, self.loader, keep_image)

    def _predict(self, batch: List[Decoded]) -> List[Prediction]:
        want_logits = bool(self.outputs.save_logits)
        if batch[0].data is None:  # the sequential loop
            return self.predictor.predict([item.image for item in batch], want_logits)
        return self.predictor.predict_preprocessed(batch, want_logits)

    def forward(self, batch: List[Decoded]) -> List[Tuple[Decoded, Prediction, float]]:
        """``(item, prediction, seconds per image)`` for the items that ran."""
        start = time.perf_counter()
        try:
            predictions = self._predict(batch)
        except Exception as error:  # noqa: BLE001 - report, go on with the other images
            if len(batch) > 1:
                return [out for item in batch for out in self.forward([item])]
            self.fail(batch[0].index, inference_failure(error), batch[0].identity)
            return []
        seconds = (time.perf_counter() - start) / len(batch)
        return [(item, prediction, seconds) for item, prediction in zip(batch, predictions)]

    def write(self, item: Decoded, prediction: Prediction, infer_s: float) -> None:
        """Write the outputs of ``prediction`` and journal the image; or fail it (non-finite
        logits, an error of its own); a storage error (``OutputStorageError``) stops the run."""
        task = self.tasks[item.index]
        start = time.perf_counter()
        if prediction.problem is not None:
            self.fail(item.index, prediction.problem, item.identity)
            return
        try:
            label = self._write_outputs(task, item.image, prediction)
        except OutputStorageError:
            raise  # no space left etc.: every image would fail alike
        except Exception as error:  # noqa: BLE001 - a permission, a name too long: report it
            reason = f"cannot write outputs: {type(error).__name__}: {error}"
            self.fail(item.index, reason, item.identity)
            return
        label_counts = class_pixel_counts(label, self.num_classes)
        seconds = (item.read_s, infer_s, time.perf_counter() - start)
        self.record(item.index, item.info, label.shape, label_counts, seconds, item.identity)

    def record(
        self,
        index: int,
        source: dict,
        shape: Tuple[int, ...],
        class_pixels: Dict[str, int],
        seconds: Tuple[float, float, float],
        identity: dict,
    ) -> None:
        """Record task ``index`` as done (outputs in place): ``source`` is ``read_image``'s
        description, ``seconds`` ``(read, infer, write)``."""
        task = self.tasks[index]
        self.records[index] = {
            "name": task.name,
            "input": task.path,
            "status": "done",
            "height": int(shape[0]),
            "width": int(shape[1]),
            "source": {k: source[k] for k in ("format", "mode", "bit_depth")},
            "conversions": source["conversions"],
            "class_pixels": class_pixels,
            "outputs": {k: osp.relpath(v, self.out_dir) for k, v in task.outputs.items()},
            "timings": {
                "read_s": round(seconds[0], 4),
                "infer_s": round(seconds[1], 4),
                "write_s": round(seconds[2], 4),
            },
        }
        if self.journal is not None:
            self.journal.add(self.records[index], identity)

    def _write_outputs(self, task: ImageTask, image: np.ndarray, prediction: Prediction):
        label = prediction.label
        if self.outputs.save_logits:
            _save(
                task.outputs["logits"], encode_logits(prediction.logits, self.outputs.save_logits)
            )
        if "overlay" in task.outputs:
            overlay_bgr = render_overlay(image, label, self.palette, self.outputs.opacity)
            _save(task.outputs["overlay"], encode_jpeg(overlay_bgr))
        _save(task.outputs["label"], encode_label_png(label, self.palette))
        return label

    def run(self, todo: Sequence[int], progress: Progress) -> None:
        """Segment the tasks ``todo``; consecutive images of equal size share a batch; with a
        sliding window, one image at a time in bounded memory (``large``)."""
        if self.predictor.slide is not None:
            for index in todo:
                segment_large(self, index, progress)
                progress.update(1)
            return
        items = (self.preprocess(index) for index in todo)
        try:
            for batch in equal_shape_batches(items, self.loader.batch_size, progress.update):
                for item, prediction, seconds in self.forward(batch):
                    self.write(item, prediction, seconds)
                progress.update(len(batch))
        finally:
            self.frames.close()


def segment_inputs(
    load: Callable[[RankInfo], Predictor],
    input_path: str,
    out_dir: str = DEFAULT_OUT_DIR,
    *,
    model_fields: Optional[dict] = None,
    outputs: Optional[OutputOptions] = None,
    loader: Optional[LoaderOptions] = None,
    distributed: Optional[DistributedOptions] = None,
    progress: bool = True,
) -> dict:
    """Segment every image of ``input_path`` (image, folder or list file) into ``out_dir``
    with the predictor ``load(rank_info)`` returns (called once the output folder is checked
    and locked); ``model_fields`` (config, checkpoint...) go into the summary before the
    predictor's own ``describe()``.

    ``outputs`` (``OutputOptions``): what is written per image, ``force``; ``loader``
    (``LoaderOptions``): which files, size limits, batching and the loop; ``distributed``
    (``DistributedOptions``): one rank of a launch. Defaults: ``OutputOptions()`` etc.

    Every finished image is appended to ``out_dir/journal.jsonl``; unless ``outputs.force``,
    images the journal records as done by the same model (``fingerprint``) from the same input
    (name, size, mtime) whose outputs all exist are skipped. Images that cannot be read
    (``loader.max_pixels``, ``loader.max_bytes``: see ``read_image``) or segmented are
    reported in the summary's ``failures`` (name and reason) and the others are processed.
    Consecutive images of equal size are batched (``loader.batch_size``). Returns the summary,
    rebuilt from the journal, that is also written to ``out_dir/summary.json`` (also at the
    start, periodically and on an interruption).

    ``loader.pipelined``: the pipelined loop (``pipeline``: ``loader.workers`` DataLoader
    processes read and preprocess, ``loader.writers`` threads write; the same labels), else
    the sequential one. ``distributed.launcher`` ``pytorch`` (torchrun) or ``slurm``: this
    process is one rank and segments its shard (``distributed``); rank 0 writes the merged
    summary when all ranks are done (waiting at most ``distributed.timeout`` seconds) and
    returns it, the other ranks return it as they see it then; with ``"rank"``: this rank's
    own counts.

    Videos (``input_path`` one, or among the folder's or list's files) are segmented frame by
    frame and assembled into label (and overlay) videos (see the module docstring); their
    frames batch together and resume frame by frame.

    Another model's outputs are segmented again or refused (``outputs.on_model_change``);
    SIGTERM is handled as SIGINT while it runs (the previous handler is restored after); see
    the module docstring.

    Raises:
        InferenceInputError: ``input_path`` is missing or holds no images, or bad options.
        OutputDirError: ``out_dir`` cannot be used (``OutDirBusyError``: another run holds it).
        ModelChangedError: ``on_model_change='refuse'`` and ``out_dir`` holds another model's
            outputs.
        OutputStorageError: no space left (or quota, read-only) while writing; a re-run
            finishes.
        KeyboardInterrupt: SIGINT, or SIGTERM (``interrupts.Terminated``); summary.json rebuilt.
        Whatever ``load`` raises (``ModelLoadError``...).
    """
    outputs = outputs or OutputOptions()
    loader = loader or LoaderOptions()
    distributed = distributed or DistributedOptions()
    info = rank_info(distributed.launcher)
    start, started = time.perf_counter(), time.time()
    tasks = collect_inputs(input_path, loader.recursive, loader.extensions, out_dir=out_dir)
    for task in tasks:
        _plan_outputs(task, out_dir, outputs.overlay, outputs.save_logits)
    _mark_output_conflicts(tasks, out_dir)
    mine = shard(tasks, info.rank, info.world_size)
    journal_file = journal_name(info.rank, info.world_size)
    made = check_out_dir(
        out_dir, [SUMMARY_NAME, LOCK_NAME], _output_folders(outputs), appended=[journal_file]
    )
    lock, group = OutDirLock(out_dir), None
    try:
        if info.rank == 0:  # the other ranks rely on their shards
            _say_lock(lock.acquire(), info)
        group = RankGroup(info, distributed.timeout)
        with termination_as_interrupt():
            predictor = load(info)
            if predictor.slide is not None:
                _plan_slide_outputs(tasks)
            if loader.pipelined and not _pipelines(predictor) and info.rank == 0:
                print(
                    "note: --workers needs the PyTorch model in whole mode: the sequential "
                    "loop runs",
                    file=sys.stderr,
                )
            fingerprint = predictor.fingerprint()
            load_s = time.perf_counter() - start
            journal = Journal(out_dir, info.rank, info.world_size, fingerprint["digest"])
            runner = FolderInference(predictor, tasks, out_dir, outputs, loader, journal)
            todo, skipped = _plan_work(tasks, mine, journal, outputs, fingerprint, info)
            described = predictor.describe()
            fields = {**(model_fields or {}), "input": str(input_path), "out_dir": out_dir}
            fields.update((k, v) for k, v in described.items() if k not in fields)
            run = group.agree(journal.next_run)
            fields.update(_video_fields(tasks))
            units = _journal_tasks(tasks)
            journal.start(fields, units, skipped, started, load_s, run)
            try:
                with Progress(len(mine), enabled=progress and info.rank == 0) as bar:
                    bar.update(len(mine) - len(todo))
                    _loop(runner, todo, loader, bar)
                assemble_videos(runner, mine, skipped)
            except BaseException as error:
                journal.close()
                _stopped(error, out_dir, info)
                raise
            journal.close()
            problem = group.barrier()
    finally:
        if group is not None:
            group.close()
        lock.release()
        if made and not info.distributed:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)  # only when empty: nothing was written (the model failed)
    if info.rank == 0:
        summary = rebuild_summary(out_dir, now=time.time())
        note = incomplete_note(summary, problem) if info.distributed else None
        if note:
            warn(info, note)
    else:
        summary = summarize(read_journals(out_dir), out_dir, now=time.time())
    if info.distributed:
        summary["rank"] = {
            "rank": info.rank,
            "world_size": info.world_size,
            "images": len(mine),
            "processed": len(runner.records),
            "skipped": len(skipped),
            "failed": len(runner.failures),
        }
    return summary


def _loop(runner: FolderInference, todo: Sequence[int], loader: LoaderOptions, bar) -> None:
    if loader.pipelined and _pipelines(runner.predictor):
        # torch's DataLoader: only the PyTorch predictor has this loop
        from .pipeline import run_pipelined  # noqa: PLC0415

        pin = str(getattr(runner.predictor, "device", "cpu")).startswith("cuda")
        batch, workers, writers = loader.batch_size, loader.workers, loader.writers
        run_pipelined(runner, todo, batch, bar, workers, writers, pin)
    else:
        runner.run(todo, bar)


def _pipelines(predictor: Predictor) -> bool:
    """Whether the pipelined loop can run ``predictor``: the PyTorch model in whole mode."""
    return predictor.slide is None and hasattr(predictor, "pipeline_dataset")


def _output_folders(outputs: OutputOptions) -> List[str]:
    return (
        [LABEL_DIR]
        + ([OVERLAY_DIR] if outputs.overlay else [])
        + ([LOGITS_DIR] if outputs.save_logits else [])
    )


def _say_lock(lock: OutDirLock, info: RankInfo) -> None:
    if lock.unsupported:
        warn(info, f"output folder not locked ({lock.unsupported}): run one infer at a time")
    elif lock.taken_over:
        holder = describe_holder(lock.taken_over)
        print(f"note: took over {lock.path} of {holder}, which had ended", file=sys.stderr)


def _plan_work(
    tasks: Sequence[ImageTask],
    mine: Sequence[int],
    journal: Journal,
    outputs: OutputOptions,
    fingerprint: dict,
    info: RankInfo,
) -> Tuple[List[int], List[str]]:
    """``(todo, skipped names)`` of this rank's tasks ``mine``: an image is skipped when the
    journal's model fingerprint, input and outputs all match (``_is_finished``). Outputs of
    another model are segmented again, or refused (``outputs.on_model_change``); decided on
    all the tasks, so every rank decides alike. A video whose video entry is done
    (``_video_finished``) is skipped whole (its name in ``skipped``, none of its frames)."""
    out_dir = journal.out_dir
    names = [t.name for t in tasks] + sorted({t.video for t in tasks if t.video is not None})
    other = {} if outputs.force else journal.made_by_other_models(names)
    if other:
        changes = sorted({describe_change(old, fingerprint) for old in other.values()})
        what = (
            f"{len(other)} image(s) in {out_dir} were segmented by another model "
            f"({'; '.join(changes)})"
        )
        if outputs.on_model_change == "refuse":
            raise ModelChangedError(
                f"{what}: --on-model-change redo segments them again, or choose another --out-dir"
            )
        if info.rank == 0:
            print(f"note: {what}: segmenting them again", file=sys.stderr)
    todo, skipped = [], []
    videos_done: Dict[str, bool] = {}  # a video whose video entry is done: all frames skipped
    for index in mine:
        task = tasks[index]
        if task.frame is not None and task.video not in videos_done:
            done = not outputs.force and task.video not in other
            videos_done[task.video] = done and _video_finished(task, journal, outputs.overlay)
            if videos_done[task.video]:
                skipped.append(task.video)
                if not outputs.keep_frames:
                    _remove_frames(task, out_dir)  # left by a run killed after the record
        if videos_done.get(task.video):
            continue
        if (
            outputs.force
            or task.error is not None
            or task.name in other
            or not _is_finished(task, out_dir, journal)
        ):
            todo.append(index)
        else:
            skipped.append(task.name)
    return todo, skipped


def _stopped(error: BaseException, out_dir: str, info: RankInfo) -> None:
    """After the loop stopped on ``error``: rebuild the summary from the journals (rank 0) and
    say what is missing; a storage error gets what to do in its message."""
    summary = None
    if info.rank == 0:
        with contextlib.suppress(Exception):  # keep the original error
            summary = rebuild_summary(out_dir, now=time.time())
    if info.distributed and summary is not None:
        stopped = f"stopped by {error or type(error).__name__}"
        if isinstance(error, Terminated):
            stopped = "stopped by SIGTERM (torchrun stops every rank when one fails)"
        warn(info, incomplete_note(summary, stopped) or stopped)
    if isinstance(error, OutputStorageError):
        note = "the journal keeps every finished image"
        if info.rank == 0 and summary is None:
            note += f", summary.json is stale (ann-seg infer --merge-only --out-dir {out_dir})"
        error.note = f"{note}; free some space and re-run the same command to finish the others"


# Videos: every frame is a task (``inputs.video_tasks``) whose label PNG and journal entry
# are the state a re-run resumes from; once a video's frames are done, its label video (and
# overlay video) are assembled from those PNGs in frame order, deterministically, so a
# resumed run writes the bytes an uninterrupted one writes.

LABEL_VIDEO_EXT, OVERLAY_VIDEO_EXT = ".mkv", ".mp4"
DEFAULT_VIDEO_FPS = 25.0  # for a container that states no frame rate


def _video_fields(tasks: Sequence[ImageTask]) -> dict:
    """The run entry's ``video_frames``: video name -> frame count (0: unreadable)."""
    frames: Dict[str, int] = {}
    for task in tasks:
        if task.video is not None:
            frames[task.video] = frames.get(task.video, 0) + (task.frame is not None)
    return {"video_frames": frames} if frames else {}


def _journal_tasks(tasks: Sequence[ImageTask]) -> List[Tuple[str, str]]:
    """``(name, input)`` of the run's files: each image, each video once."""
    units, seen = [], set()
    for task in tasks:
        name = task.name if task.video is None else task.video
        if name not in seen:
            seen.add(name)
            units.append((name, task.path))
    return units


def _video_stem(task: ImageTask) -> str:
    """The output stem of the video ``task`` (a frame) is of: ``clip.mp4`` -> ``clip.mp4``."""
    return task.out_stem.rsplit("/", 1)[0][: -len(FRAMES_SUFFIX)]


def _video_outputs(task: ImageTask, out_dir: str, overlay: bool) -> Dict[str, str]:
    """The video outputs of the video whose frame ``task`` is: ``label_video``
    (``labels/<stem>.mkv``) and, with ``overlay``, ``overlay_video`` (``overlays/<stem>.mp4``)."""
    parts = _video_stem(task).split("/")
    outputs = {"label_video": osp.join(out_dir, LABEL_DIR, *parts) + LABEL_VIDEO_EXT}
    if overlay:
        outputs["overlay_video"] = osp.join(out_dir, OVERLAY_DIR, *parts) + OVERLAY_VIDEO_EXT
    return outputs


def _video_finished(task: ImageTask, journal: Journal, overlay: bool) -> bool:
    """The latest entry of ``task``'s video is a ``done`` video entry from an input of the same
    size and mtime, with the video outputs planned now, all of which exist."""
    entry = journal.state.latest(task.video)
    if entry is None or entry["type"] != "video" or entry["status"] != "done":
        return False
    identity = input_identity(task.path)
    if None in identity.values() or entry.get("file") != identity:
        return False
    written = entry.get("outputs") or {}
    return all(
        written.get(kind) == osp.relpath(path, journal.out_dir) and osp.isfile(path)
        for kind, path in _video_outputs(task, journal.out_dir, overlay).items()
    )


def _remove_frames(task: ImageTask, out_dir: str) -> None:
    """Delete the frame label PNGs of ``task``'s video (and stale temporary files among them),
    then their folder if it is empty (logits stay)."""
    folder = osp.dirname(task.outputs.get("label") or "")
    if not osp.isdir(folder):
        return
    for name in os.listdir(folder):
        stem, ext = osp.splitext(name)
        if (ext == ".png" and stem.isdigit()) or (name.startswith(".") and name.endswith(".tmp")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(osp.join(folder, name))
    with contextlib.suppress(OSError):
        os.rmdir(folder)


def _sweep_temporaries(path: str) -> None:
    """Delete the hidden temporary files a killed video writer left beside ``path``."""
    folder, name = osp.split(path)
    with contextlib.suppress(OSError):
        for other in os.listdir(folder):
            if other.startswith(f".{name}.") and ".tmp" in other:
                with contextlib.suppress(OSError):
                    os.unlink(osp.join(folder, other))


def assemble_videos(runner: FolderInference, mine: Sequence[int], skipped: Sequence[str]) -> None:
    """After the loop: assemble each video of the tasks ``mine`` (ascending) not in
    ``skipped`` (done by an earlier run) from its frames (``assemble_video``)."""
    groups: Dict[str, List[int]] = {}
    for index in mine:
        task = runner.tasks[index]
        if task.frame is not None and task.video not in skipped:
            groups.setdefault(task.video, []).append(index)
    for indices in groups.values():
        assemble_video(runner, indices)


def assemble_video(runner: FolderInference, indices: Sequence[int]) -> None:
    """Write the label video (and, with ``overlay``, the overlay video: the source frames
    decoded again) of the frames ``runner.tasks[i]`` for ``i`` in ``indices`` (all of one video,
    in frame order) from the longest run of frames from the first whose journal entry is
    ``done`` by this model, then journal the video: ``done`` when that is every frame, else
    ``failed`` naming the first frame missing. A done video's frame PNGs are deleted unless
    ``outputs.keep_frames`` (a failed one keeps them: a re-run redoes only the missing)."""
    journal, out_dir, opts = runner.journal, runner.out_dir, runner.outputs
    tasks = [runner.tasks[i] for i in indices]
    first = tasks[0]
    identity = input_identity(first.path)
    good, reason = 0, None
    for task in tasks:
        entry = journal.state.latest(task.name)
        if (
            entry is None
            or entry["status"] != "done"
            or entry.get("fingerprint") != journal.fingerprint
            or not osp.isfile(task.outputs["label"])
        ):
            why = entry.get("reason") if entry is not None else None
            reason = f"{good} of {len(tasks)} frames segmented; frame {task.frame}: " + (
                why or "not segmented"
            )
            break
        good += 1
    fps = first.source.fps if first.source.fps > 0 else DEFAULT_VIDEO_FPS
    outputs = _video_outputs(first, out_dir, opts.overlay) if good else {}
    try:
        _write_videos(runner, tasks[:good], outputs, fps)
    except OutputStorageError:
        raise
    except (VideoError, OSError, ValueError) as error:  # a permission, a codec missing...
        reason = f"cannot write the videos: {type(error).__name__}: {error}"
        good, outputs = 0, {}
    class_pixels: Dict[str, int] = {}  # of the frames in the video, as an image's
    for task in tasks[:good]:
        for key, count in (journal.state.latest(task.name).get("class_pixels") or {}).items():
            class_pixels[key] = class_pixels.get(key, 0) + count
    class_pixels = dict(sorted(class_pixels.items(), key=lambda kv: int(kv[0])))
    record = {
        "name": first.video,
        "input": first.path,
        "status": "done" if reason is None else "failed",
        "frames": len(tasks),
        "frames_written": good,
        "fps": fps,
        "height": first.source.height,
        "width": first.source.width,
        "class_pixels": class_pixels,
        "outputs": {k: osp.relpath(v, out_dir) for k, v in outputs.items()},
    }
    if reason is not None:
        record["reason"] = reason
    journal.add(record, identity, kind="video")
    if reason is None and not opts.keep_frames:
        _remove_frames(first, out_dir)


def _write_videos(
    runner: FolderInference, tasks: Sequence[ImageTask], outputs: Dict[str, str], fps: float
) -> None:
    if not tasks:
        return
    labels = lambda: (read_label_png(t.outputs["label"]) for t in tasks)  # noqa: E731
    path = outputs["label_video"]
    with storage_errors(path):
        _sweep_temporaries(path)
        with LabelVideoWriter(path, runner.palette, fps) as writer:
            for label in labels():
                writer.write(label)
    if "overlay_video" in outputs:
        path, source = outputs["overlay_video"], tasks[0].source
        frames = read_frames(tasks[0].path, 0, len(tasks), info=source)
        with storage_errors(path):
            _sweep_temporaries(path)
            with OverlayVideoWriter(path, runner.palette, fps, runner.outputs.opacity) as writer:
                for (_, frame), label in zip(frames, labels()):
                    writer.write(frame, label)
