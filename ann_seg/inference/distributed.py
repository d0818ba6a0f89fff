"""Folder inference sharded across processes, GPUs and machines (``ann-seg dist-infer``,
``ann-seg infer --launcher pytorch|slurm``).

* Ranks: torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE``, or Slurm's
  ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` (tasks on this node from
  ``SLURM_STEP_TASKS_PER_NODE``).
* Work: rank ``k`` of ``W`` takes the tasks whose position in the list sorted by name is ``k``
  modulo ``W``; nothing is exchanged while working. Every rank skips what any earlier run
  finished (it reads every journal of the output folder), so a re-run with another ``W``
  segments only what is missing.
* Device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU with
  ``max(1, cores // LOCAL_WORLD_SIZE)`` threads (``--threads`` wins; torchrun's
  ``OMP_NUM_THREADS=1`` does not).
* Journals: one per rank, ``journal.rank<k>.jsonl`` (see ``journal``): on a folder shared by
  several machines (NFS) appends to one file from several hosts are not atomic, and a rank
  killed mid-line tears only its own file.
* A gloo process group serves two things only: ranks agree at the start on the run number
  (rank 0's), and rank 0 waits at the end until every rank is done (a monitored barrier),
  then merges ``summary.json`` from all journals. When the group cannot be formed, a rank died
  or the barrier timed out, rank 0 still merges what exists and says what is missing;
  ``ann-seg infer --merge-only --out-dir DIR`` (``merge_journals``) merges by hand.
"""

import contextlib
import datetime
import os
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .inputs import ImageTask, InferenceInputError
from .journal import rebuild_summary

LAUNCHERS = ("none", "pytorch", "slurm")
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_PORT = 29500
_TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
_SLURM_KEYS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands among the ranks of one launch."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def label(self) -> str:
        return f"rank {self.rank}/{self.world_size}" if self.distributed else ""


def _env_int(env: Dict[str, str], key: str, hint: str) -> int:
    if key not in env:
        raise InferenceInputError(f"{key} is not set: {hint}")
    try:
        return int(env[key])
    except ValueError:
        raise InferenceInputError(f"{key} must be an integer, got {env[key]!r}") from None


def tasks_on_node(tasks_per_node: str, node: int) -> int:
    """Slurm's ``2(x3),1`` (three nodes with 2 tasks, then one with 1): node ``node``'s."""
    counts: List[int] = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise InferenceInputError(f"cannot parse Slurm tasks per node {tasks_per_node!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if not 0 <= node < len(counts):
        raise InferenceInputError(f"SLURM_NODEID {node} is not a node of {tasks_per_node!r}")
    return counts[node]


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``node[03-05,9],gpu1`` -> ``node03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise InferenceInputError(f"cannot parse Slurm node list {nodelist!r}")
    prefix, ranges = match.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def rank_info(launcher: str = "none", env: Optional[Dict[str, str]] = None) -> RankInfo:
    """This process's ranks for ``launcher`` (``none``: one process) from ``env``
    (``os.environ``). Raises ``InferenceInputError`` naming a missing or bad variable."""
    env = os.environ if env is None else env
    if launcher not in LAUNCHERS:
        raise InferenceInputError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if launcher == "none":
        return RankInfo()
    if launcher == "pytorch":
        hint = "--launcher pytorch needs torchrun's environment; start with ann-seg dist-infer"
        rank, world, local, local_world = (_env_int(env, k, hint) for k in _TORCHRUN_KEYS)
    else:
        hint = "--launcher slurm needs srun's environment (srun ... ann-seg infer ...)"
        rank, world, local = (_env_int(env, k, hint) for k in _SLURM_KEYS)
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        if per_node:
            local_world = tasks_on_node(per_node, _env_int(env, "SLURM_NODEID", hint))
        else:
            local_world = int(env.get("SLURM_NTASKS_PER_NODE", "1") or 1)
    if not (0 <= rank < world and 0 <= local < local_world):
        raise InferenceInputError(
            f"inconsistent ranks from {launcher}: rank {rank} of {world}, local rank {local} "
            f"of {local_world}"
        )
    return RankInfo(rank, world, local, local_world, launcher)


def shard(tasks: Sequence[ImageTask], rank: int, world_size: int) -> List[int]:
    """Indices (ascending) of the tasks of ``rank``: of the files (an image, or a video with
    all its frames) sorted by name, every ``world_size``-th from the ``rank``-th; the same for
    any order of ``tasks``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    files = sorted({task.video or task.name for task in tasks})
    mine = set(files[rank::world_size])
    return [i for i, task in enumerate(tasks) if (task.video or task.name) in mine]


def _init_method(info: RankInfo, env: Dict[str, str]) -> Optional[str]:
    if info.launcher == "pytorch":
        return None  # env://: torchrun's MASTER_ADDR/MASTER_PORT
    addr = env.get("MASTER_ADDR") or first_host(
        env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    )
    return f"tcp://{addr}:{env.get('MASTER_PORT', DEFAULT_PORT)}"


class RankGroup:
    """The gloo group of one launch: ``agree`` on a value, ``barrier`` at the end. A group
    that could not be formed keeps the reason in ``error``; its methods then do nothing."""

    def __init__(self, info: RankInfo, timeout_s: float = DEFAULT_TIMEOUT_S, env=None):
        self.info, self.timeout_s = info, timeout_s
        self.error: Optional[str] = None
        self._owned, self._dist = False, None
        if not info.distributed:
            return
        # torch.distributed only for a multi-process launch: one rank alone needs no torch
        import torch.distributed as dist  # noqa: PLC0415

        self._dist = dist
        try:
            if not dist.is_initialized():
                dist.init_process_group(
                    "gloo",
                    init_method=_init_method(info, os.environ if env is None else env),
                    rank=info.rank,
                    world_size=info.world_size,
                    timeout=datetime.timedelta(seconds=timeout_s),
                )
                self._owned = True
        except Exception as error:  # noqa: BLE001 - work on without it, say so at the end
            self.error = f"no process group ({type(error).__name__}: {error})"

    @property
    def ok(self) -> bool:
        return self.info.distributed and self.error is None

    def agree(self, value: int) -> int:
        """Rank 0's ``value`` on every rank (one's own when there is no group)."""
        if not self.ok:
            return value
        try:
            values = [value]
            self._dist.broadcast_object_list(values, src=0)
            return int(values[0])
        except Exception as error:  # noqa: BLE001
            self.error = f"ranks could not agree on the run number ({error})"
            return value

    def barrier(self) -> Optional[str]:
        """Wait until every rank is here; ``None``, or why not all ranks were seen."""
        if not self.info.distributed:
            return None
        if not self.ok:
            return self.error
        try:
            self._dist.monitored_barrier(
                timeout=datetime.timedelta(seconds=self.timeout_s), wait_all_ranks=True
            )
        except Exception as error:  # noqa: BLE001 - a rank died or is late: merge what exists
            text = " ".join(str(error).split())
            self.error = f"not every rank finished ({type(error).__name__}: {text[:300]})"
        return self.error

    def close(self) -> None:
        if self._owned and self._dist.is_initialized():
            with contextlib.suppress(Exception):
                self._dist.destroy_process_group()
        self._owned = False


def merge_journals(out_dir: str) -> dict:
    """Write ``out_dir/summary.json`` from every journal there (``rebuild_summary``); for a
    run that crashed or a rank 0 that could not wait. Raises ``InferenceInputError`` when
    there is no journal."""
    try:
        return rebuild_summary(out_dir)
    except ValueError as error:
        raise InferenceInputError(f"nothing to merge: {error}") from None


def incomplete_note(summary: dict, problem: Optional[str] = None) -> Optional[str]:
    """What a merged ``summary`` lacks (ranks that never started, pending images) and why,
    for stderr; ``None`` when it is complete."""
    journal = summary["journal"]
    missing = journal.get("missing_ranks") or []
    counts = summary["counts"]
    videos = counts.get("videos") or {}
    pending = counts["pending"] + videos.get("pending", 0)
    if not (problem or missing or pending):
        return None
    parts = [problem] if problem else []
    if missing:
        parts.append(f"no journal entry from rank(s) {missing} for this run")
    what = f"{counts['pending']} of {counts['images']} images"
    if videos:
        what += f" and {videos['pending']} of {videos['videos']} videos"
    parts.append(
        f"summary.json merges what exists: {what} pending"
        + ("; re-run the same command to finish them" if pending else "")
    )
    return "; ".join(parts)


def warn(info: RankInfo, message: str) -> None:
    prefix = f"[{info.label}] " if info.distributed else ""
    print(f"{prefix}warning: {message}", file=sys.stderr)
