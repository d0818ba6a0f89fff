"""The append-only record of a folder inference: ``out_dir/journal.jsonl`` (one process) or
``out_dir/journal.rank<k>.jsonl`` (rank ``k`` of a distributed run), and ``summary.json``
rebuilt from all of them.

One JSON object per line, appended, flushed and fsynced:

* ``{"type": "run", "run": N, "started": T, "load_model_s": S, "tasks": [[name, input], ...],
  "skipped": [name, ...], "config": ..., "fingerprint": {...}, ...}``: a run starts (its
  images, those it skips, and the summary's run-level keys, the model's ``fingerprint``
  among them); a rank of a distributed run adds ``"shard": {"rank": k, "world_size": W}``,
  lists all the run's images in ``tasks`` and skips only its own;
* ``{"type": "image", "run": N, "time": T, "fingerprint": D, "file": {"size": B,
  "mtime_ns": M}, "name": ..., "input": ..., "status": "done" | "failed", ...}``: an image is
  finished, written after its outputs are in place; the other keys are its summary record
  (``done``) or ``reason`` (``failed``). ``file`` is the input's size and modification time
  when it was read, ``fingerprint`` the digest of the model that made it. A video's frames
  are images named ``<video>#<frame:06d>`` (``input``: the video);
* ``{"type": "video", ..., "name": ..., "status": "done" | "failed", "frames": N,
  "frames_written": K, "fps": F, "outputs": {...}}``: a video's outputs are assembled from its
  first ``K`` frames (all ``N`` when ``done``; ``failed`` adds the ``reason``: the first frame
  missing). The run entry's ``video_frames`` maps each video's name to its frame count (0: it
  could not be read), its ``tasks`` list the video once.

An append is whole or undone (cut back on an error: no space left, an interrupt), so only a
killed process leaves a torn line.

Run numbers count across all the journal files of ``out_dir`` (the ranks of one launch share
theirs), so the files read together: entries in run order, the run entries of the ranks of a
run merged into one (``JournalState``). A re-run skips an image whose latest entry is ``done``
by the same model for the same name, size and mtime and whose outputs exist, whichever file
holds it. Lines that are not well-formed entries (a torn last line of a killed run, valid JSON
with a key missing or of the wrong type: ``is_entry``) are ignored and counted (the summary's
``journal.ignored_lines``).
``rebuild_summary(out_dir)`` writes ``summary.json`` for the last run of all journals; a run
writes it at its start, periodically and at its end (in a distributed run: rank 0, merging all
files).
"""

import contextlib
import json
import os
import os.path as osp
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ann_seg.io import atomic_write_json

from .outdir import STORAGE_ERRNOS, OutputStorageError, storage_errors

JOURNAL_NAME = "journal.jsonl"
RANK_JOURNALS = "journal.rank*.jsonl"
_RANK_JOURNAL = re.compile(r"journal\.rank(\d+)\.jsonl")
SUMMARY_NAME = "summary.json"
SUMMARY_EVERY_IMAGES = 100
SUMMARY_EVERY_S = 30.0
_FINGERPRINT = "fingerprint"  # run entry: the model's (``fingerprint``); image entry: its digest
_ENTRY_ONLY = ("type", "run", "time", "file", _FINGERPRINT)  # not summary keys
_VIDEO_FRAMES = "video_frames"  # run key: video name -> frame count
_RUN_ONLY = ("type", "run", "started", "load_model_s", "tasks", "skipped", _VIDEO_FRAMES)
_SHARD = "shard"  # run key of a distributed run's rank
_STATUSES = ("done", "failed")


def journal_name(rank: int = 0, world_size: int = 1) -> str:
    """The journal file a process writes: ``journal.jsonl``, or ``journal.rank<k>.jsonl`` for
    rank ``k`` of more than one."""
    return JOURNAL_NAME if world_size == 1 else f"journal.rank{rank}.jsonl"


def journal_files(out_dir: str) -> List[str]:
    """The journal files in ``out_dir``: ``journal.jsonl`` first, then the ranks' in rank order."""
    try:
        names = os.listdir(out_dir)
    except OSError:
        return []
    ranks = sorted((int(m.group(1)), m.group(0)) for m in map(_RANK_JOURNAL.fullmatch, names) if m)
    return ([JOURNAL_NAME] if JOURNAL_NAME in names else []) + [name for _, name in ranks]


def input_identity(path: str) -> Dict[str, Optional[int]]:
    """``{"size", "mtime_ns"}`` of the file ``path`` names (``None`` where it cannot be
    stat'ed)."""
    try:
        info = os.stat(path)
    except OSError:
        return {"size": None, "mtime_ns": None}
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_identity(value: Any) -> bool:
    return isinstance(value, dict) and all(
        value.get(k) is None or _is_int(value.get(k)) for k in ("size", "mtime_ns")
    )


def _is_str_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _is_image(entry: dict) -> bool:
    """Keys read: ``name``, ``status``, ``time``, and ``reason`` (failed) or ``timings``'s
    ``infer_s`` (done); ``input``, ``file``, ``outputs``, ``fingerprint``, when present."""
    status, timings = entry.get("status"), entry.get("timings")
    optional = {"input": str, "file": dict, "outputs": dict, _FINGERPRINT: str}
    if not (
        isinstance(entry.get("name"), str)
        and status in _STATUSES
        and _is_number(entry.get("time"))
        and all(isinstance(entry.get(k, kind()), kind) for k, kind in optional.items())
        and _is_identity(entry.get("file", {}))
        and _is_str_dict(entry.get("outputs", {}))
    ):
        return False
    if status == "failed":
        return isinstance(entry.get("reason"), str)
    return isinstance(timings, dict) and _is_number(timings.get("infer_s"))


def _is_video(entry: dict) -> bool:
    """Keys read: those of ``_is_image`` but ``timings``, and ``frames``, ``frames_written``."""
    entry = dict(entry, timings={"infer_s": 0.0})
    return _is_image(entry) and all(_is_int(entry.get(k)) for k in ("frames", "frames_written"))


def _is_run(entry: dict) -> bool:
    tasks, shard = entry.get("tasks"), entry.get(_SHARD, {})
    return (
        _is_number(entry.get("started"))
        and _is_number(entry.get("load_model_s"))
        and isinstance(tasks, list)
        and all(_is_str_list(t) and len(t) == 2 for t in tasks)
        and _is_str_list(entry.get("skipped"))
        and isinstance(shard, dict)
        and all(_is_int(shard.get(k, 0)) for k in ("rank", "world_size"))
        and isinstance(entry.get(_FINGERPRINT, {}), dict)
        and isinstance(entry.get(_VIDEO_FRAMES, {}), dict)
        and all(_is_int(n) for n in entry.get(_VIDEO_FRAMES, {}).values())
    )


def is_entry(entry: Any) -> bool:
    """A well-formed journal entry (a run's or an image's): the keys the journal reads, of the
    types it writes. Anything else (a torn line, a hand edit) is ignored and counted."""
    if not isinstance(entry, dict) or not _is_int(entry.get("run")):
        return False
    if entry.get("type") == "image":
        return _is_image(entry)
    if entry.get("type") == "video":
        return _is_video(entry)
    return entry.get("type") == "run" and _is_run(entry)


@dataclass
class JournalState:
    """What the journals say: the last run (``run``: the run entries of its ranks merged, by
    rank in ``ranks``), the latest image entry per name of that run (``current``) and of the
    runs before (``previous``), the highest run number, the ignored lines. Entries go in in
    run order (``read_journals``). ``fingerprints``: the model fingerprint of every run that
    recorded one, by digest."""

    run: Optional[dict] = None
    previous: Dict[str, dict] = field(default_factory=dict)
    current: Dict[str, dict] = field(default_factory=dict)
    runs: int = 0
    ignored_lines: int = 0
    ranks: Dict[int, dict] = field(default_factory=dict)
    fingerprints: Dict[str, dict] = field(default_factory=dict)

    def add(self, entry: Any) -> bool:
        """Take in one journal entry; ``False`` for anything that is not one."""
        if not is_entry(entry):
            return False
        if entry["type"] == "run":
            rank = (entry.get(_SHARD) or {}).get("rank", 0)
            if self.run is not None and entry["run"] == self.run["run"]:
                self._join(entry)  # another rank of the same run
            else:
                self.previous.update(self.current)
                self.current, self.ranks = {}, {}
                self.run = dict(entry, skipped=list(entry["skipped"]))
            self.ranks[rank] = entry
            self.runs = max(self.runs, entry["run"])
            fingerprint = entry.get(_FINGERPRINT) or {}
            if isinstance(fingerprint.get("digest"), str):
                self.fingerprints[fingerprint["digest"]] = fingerprint
        elif self.run is not None and entry["run"] == self.run["run"]:
            self.current[entry["name"]] = entry
        else:
            self.previous[entry["name"]] = entry
        return True

    def _join(self, entry: dict) -> None:
        run = self.run
        known = set(run["skipped"])
        run["skipped"] += [name for name in entry["skipped"] if name not in known]
        run["started"] = min(run["started"], entry["started"])
        run["load_model_s"] = max(run["load_model_s"], entry["load_model_s"])

    def latest(self, name: str) -> Optional[dict]:
        return self.current.get(name, self.previous.get(name))


def _read_entries(path: str) -> Tuple[List[dict], int]:
    """The well-formed entries of the journal at ``path`` and the count of other lines."""
    entries, ignored = [], 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:  # torn or garbled line (UnicodeDecodeError is a ValueError)
                entry = None
            if is_entry(entry):
                entries.append(entry)
            else:
                ignored += 1
    return entries, ignored


def _state_of(paths: Sequence[str]) -> JournalState:
    state, entries = JournalState(), []
    for path in paths:
        if osp.isfile(path):
            found, ignored = _read_entries(path)
            entries += found
            state.ignored_lines += ignored
    # run order; a run's entries before its images; otherwise file order (a stable sort)
    entries.sort(key=lambda e: (e["run"], e["type"] != "run"))
    for entry in entries:
        state.add(entry)
    return state


def read_journal(path: str) -> JournalState:
    """The state of the one journal file at ``path`` (empty when there is none)."""
    return _state_of([path])


def read_journals(out_dir: str) -> JournalState:
    """The state of all the journals of ``out_dir`` together (``journal_files``)."""
    return _state_of([osp.join(out_dir, name) for name in journal_files(out_dir)])


def _summary_record(entry: dict, status: Optional[str] = None) -> dict:
    record = {k: v for k, v in entry.items() if k not in _ENTRY_ONLY}
    if status is not None:
        record["status"] = status
        record.pop("timings", None)
    return record


def summarize(state: JournalState, out_dir: str, now: Optional[float] = None) -> dict:
    """The summary of ``state``'s last run: its images in order, done and failed ones from its
    own entries, skipped ones from the entry they were skipped for, the others ``pending``.
    Videos (the run's ``video_frames``) are listed in ``videos`` (``video_record``), counted in
    ``counts["videos"]``; a failed or pending one is also in ``failures`` (once, naming the
    first frame missing) or ``pending``."""
    run = state.run
    if run is None:
        raise ValueError(f"no run recorded in {osp.join(out_dir, JOURNAL_NAME)}")
    skipped = set(run["skipped"])
    video_frames = run.get(_VIDEO_FRAMES) or {}
    images, failures, pending, videos = [], [], [], []
    for name, path in run["tasks"]:
        if name in video_frames:
            video = video_record(state, name, path, video_frames[name], skipped)
            videos.append(video)
            if video["status"] == "failed":
                failures.append({"name": name, "input": path, "reason": video["reason"]})
            elif video["status"] == "pending":
                pending.append({"name": name, "input": path})
            continue
        entry = state.current.get(name)
        if entry is not None and entry["status"] == "done":
            images.append(_summary_record(entry))
        elif entry is not None:
            failure = _summary_record(entry)
            failure.pop("status", None)
            failures.append(failure)
        elif name in skipped and state.previous.get(name, {}).get("status") == "done":
            images.append(_summary_record(state.previous[name], "skipped"))
        else:
            pending.append({"name": name, "input": path})
    done = [r for r in images if r["status"] == "done"]
    image_failures = len(failures) - sum(v["status"] == "failed" for v in videos)
    image_pending = len(pending) - sum(v["status"] == "pending" for v in videos)
    last = max((e["time"] for e in state.current.values()), default=run["started"])
    summary = {k: v for k, v in run.items() if k not in _RUN_ONLY and k != _SHARD}
    summary.update(
        counts={
            "images": len(run["tasks"]) - len(videos),
            "processed": len(done),
            "skipped": len(images) - len(done),
            "failed": image_failures,
            "pending": image_pending,
        },
        images=images,
        failures=failures,
        pending=pending,
        timings={
            "load_model_s": run["load_model_s"],
            "infer_s": round(sum(r["timings"]["infer_s"] for r in done), 3),
            "total_s": round((last if now is None else now) - run["started"], 3),
        },
        journal={
            "file": JOURNAL_NAME,
            "run": run["run"],
            "complete": not pending,
            "ignored_lines": state.ignored_lines,
        },
    )
    if videos:
        statuses = [v["status"] for v in videos]
        summary["counts"]["videos"] = {
            "videos": len(videos),
            "processed": statuses.count("done"),
            "skipped": statuses.count("skipped"),
            "failed": statuses.count("failed"),
            "pending": statuses.count("pending"),
            "frames": sum(v["frames"] for v in videos),
            "frames_segmented": sum(v["frames_segmented"] for v in videos),
        }
        summary["videos"] = videos
        summary["timings"]["infer_s"] = round(
            summary["timings"]["infer_s"] + sum(v.pop("_infer_s") for v in videos), 3
        )
    world_size = (run.get(_SHARD) or {}).get("world_size", 1)
    if world_size > 1:
        summary["journal"].update(
            file=RANK_JOURNALS,
            world_size=world_size,
            ranks=sorted(state.ranks),
            missing_ranks=[r for r in range(world_size) if r not in state.ranks],
            devices={str(r): e.get("device") for r, e in sorted(state.ranks.items())},
        )
    return summary


def video_record(state: JournalState, name: str, path: str, frames: int, skipped: set) -> dict:
    """A video's summary record: ``status`` ``done`` or ``failed`` (its ``video`` entry of
    this run: outputs, ``frames_written``, the ``reason``), ``skipped`` (done by an earlier
    run), ``failed`` (unreadable: ``frames`` 0) or ``pending`` (frames or the assembly to do);
    ``frames_segmented``, ``frames_skipped`` (done earlier), ``frames_failed`` this run."""
    entry = state.current.get(name)
    earlier = state.previous.get(name)
    if entry is not None and entry["type"] == "video":
        record = _summary_record(entry)
    elif entry is not None:  # the image entry of a video that could not be read
        record = {"name": name, "input": path, "status": "failed", "reason": entry["reason"]}
    elif name in skipped and earlier is not None and earlier["type"] == "video":
        record = _summary_record(earlier, "skipped")
    else:
        record = {"name": name, "input": path, "status": "pending"}
    record["frames"] = frames
    segmented = failed = frames_skipped = 0
    infer_s = 0.0
    for index in range(frames):
        frame = f"{name}#{index:06d}"
        entry = state.current.get(frame)
        if entry is not None and entry["status"] == "done":
            segmented += 1
            infer_s += entry["timings"]["infer_s"]
        elif entry is not None:
            failed += 1
        elif frame in skipped or record["status"] == "skipped":
            frames_skipped += 1
    record.update(
        frames_segmented=segmented,
        frames_skipped=frames_skipped,
        frames_failed=failed,
        _infer_s=infer_s,
    )
    return record


def rebuild_summary(out_dir: str, now: Optional[float] = None) -> dict:
    """Write ``out_dir/summary.json`` (atomically) from the last run of all of ``out_dir``'s
    journals (every rank's of a distributed run) and return it; usable by hand after a crash
    (``total_s`` then ends at the last entry, else at ``now``). Raises ``ValueError`` without
    a recorded run."""
    summary = summarize(read_journals(out_dir), out_dir, now)
    path = osp.join(out_dir, SUMMARY_NAME)
    with storage_errors(path):
        atomic_write_json(path, summary)
    return summary


class Journal:
    """The journal of one run (of one rank: ``rank`` of ``world_size``) into ``out_dir``:
    ``state`` holds what all earlier runs recorded (every journal file); ``start`` appends this
    run's entry, ``add`` (thread-safe) one finished image, and ``summary.json`` is rewritten at
    the start, after ``SUMMARY_EVERY_IMAGES`` images or ``SUMMARY_EVERY_S`` seconds (never
    taking more than a tenth of the time) and by ``close``; in a distributed run by rank 0
    only, from all the ranks' journals."""

    def __init__(
        self, out_dir: str, rank: int = 0, world_size: int = 1, fingerprint: Optional[str] = None
    ):
        self.out_dir, self.rank, self.world_size = out_dir, rank, world_size
        self.fingerprint = fingerprint
        self.path = osp.join(out_dir, journal_name(rank, world_size))
        self.state = read_journals(out_dir)
        self._file = None
        self._lock = threading.Lock()
        self._since, self._last, self._cost = 0, 0.0, 0.0

    @property
    def next_run(self) -> int:
        return self.state.runs + 1

    def previous_done(self, name: str, identity: dict) -> Optional[dict]:
        """The ``done`` entry of an earlier run for ``name`` if it was made from an input of
        this ``identity`` (size and mtime) and is the latest entry for ``name``."""
        entry = self.state.latest(name)
        if entry is None or entry["status"] != "done" or None in identity.values():
            return None
        return entry if entry.get("file") == identity else None

    def made_by_other_models(self, names: Sequence[str]) -> Dict[str, Optional[dict]]:
        """Of ``names``, those whose latest entry is ``done`` by a model other than this
        journal's ``fingerprint`` (digest): name -> that model's fingerprint (``None`` when its
        run recorded none)."""
        other = {}
        for name in names:
            entry = self.state.latest(name)
            if entry is not None and entry["status"] == "done":
                digest = entry.get(_FINGERPRINT)
                if digest != self.fingerprint:
                    other[name] = self.state.fingerprints.get(digest)
        return other

    def start(
        self,
        fields: dict,
        tasks: Sequence[Tuple[str, str]],
        skipped: Sequence[str],
        started: float,
        load_model_s: float,
        run: Optional[int] = None,
    ) -> None:
        """Append the run entry: run number ``run`` (the ranks' agreed one) or ``next_run``."""
        with storage_errors(self.path):
            os.makedirs(self.out_dir, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)
        if self._file.tell() > 0:  # terminate a torn last line, so it stays one ignored line
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._append_line(b"\n")
        entry = {
            "type": "run",
            "run": self.next_run if run is None else run,
            "started": started,
            "load_model_s": round(load_model_s, 3),
            "tasks": [list(t) for t in tasks],
            "skipped": list(skipped),
            **fields,
        }
        if self.world_size > 1:
            entry[_SHARD] = {"rank": self.rank, "world_size": self.world_size}
        self._append(entry)
        self.write_summary()

    def add(self, entry: dict, identity: dict, kind: str = "image") -> None:
        """Append the record of a finished image (its outputs are in place), or of a video
        (``kind='video'``)."""
        with self._lock:
            head = {"type": kind, "run": self.state.run["run"], "time": time.time()}
            if self.fingerprint is not None:
                head[_FINGERPRINT] = self.fingerprint
            self._append({**head, "file": identity, **entry})
            self._since += 1
            elapsed = time.monotonic() - self._last
            due = self._since >= SUMMARY_EVERY_IMAGES or elapsed >= SUMMARY_EVERY_S
            if due and elapsed >= 10 * self._cost:
                self.write_summary()

    def summary(self) -> dict:
        """This run's summary: from memory for one process, else merged from all files."""
        state = self.state if self.world_size == 1 else read_journals(self.out_dir)
        return summarize(state, self.out_dir, now=time.time())

    def write_summary(self) -> Optional[dict]:
        """Rewrite ``summary.json`` (not on ranks other than 0: ``None``)."""
        if self.rank != 0:
            return None
        start = time.monotonic()
        summary = self.summary()
        path = osp.join(self.out_dir, SUMMARY_NAME)
        with storage_errors(path):
            atomic_write_json(path, summary)
        self._since, self._last = 0, time.monotonic()
        self._cost = self._last - start
        return summary

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _append(self, entry: dict) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        self._append_line(line.encode("utf-8"))
        self.state.add(json.loads(line))

    def _append_line(self, data: bytes) -> None:
        """Append ``data`` whole or not at all: on an error (no space left, an interrupt) that
        left part of it, the file is cut back to its previous end, so it never ends in a torn
        line of ours; a whole line stays (an interrupt after it was written)."""
        fd = self._file.fileno()
        end = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException as error:
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size != end + len(data):
                    os.ftruncate(fd, end)
            if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
                raise OutputStorageError(self.path, error) from error
            raise


def journal_entries(out_dir: str) -> List[dict]:
    """Every readable entry of ``out_dir``'s journals, file by file (``journal_files``), in
    order (for inspection and tests)."""
    entries = []
    for name in journal_files(out_dir):
        with open(osp.join(out_dir, name), "rb") as f:
            for raw in f:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(entry, dict) and "type" in entry:
                    entries.append(entry)
    return entries
