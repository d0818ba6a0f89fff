"""Run every command of the README's ```bash blocks: the README as a contract.

Each command runs from the repository root (after ``bash scripts/setup.sh``) in ``bash -c``
with ``set -eo pipefail``; shell variables assigned on lines of their own (``A=configs/x.py``)
stay set for the rest of their block. Comment lines are skipped, except markers, which apply to
the next command:

  # readme: skip (reason)         not run; the reason is printed. At the top of a block,
                                  before its first command: the whole block is skipped
  # readme: fast                  part of the fast subset (--fast)
  # readme: run <command>         run this smaller command in its place (long or big ones)
  # readme: expect <regex>        its output (stdout + stderr) must match the regex
  # readme: needs <path>          it needs this file or folder (e.g. the demo's checkpoint);
                                  absent: a failure, or a skip with --allow-missing

A command fails if it exits non-zero, runs past --timeout or misses an expected pattern.
Prints each command, its exit status and time, and last ``N passed, M failed``. Exit status 0
if none failed, 1 if some did, 2 for a README it cannot parse (a marker with no command).
Needs only the standard library.

Examples:
  .venv/bin/python scripts/readme_commands.py              # everything (about 10 minutes)
  .venv/bin/python scripts/readme_commands.py --fast       # the fast subset (under a minute)
  .venv/bin/python scripts/readme_commands.py --list       # what would run, with the markers
  .venv/bin/python scripts/readme_commands.py --only infer.py -v
"""

import argparse
import os
import os.path as osp
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MARKER = re.compile(r"^#\s*readme:\s*(skip|fast|run|expect|needs)\b\s*(.*)$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=[^\s;&|<>()`]*$")
FENCE = re.compile(r"^\s*```\s*([A-Za-z0-9_+-]*)\s*$")
DEMO = "configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py"

# Variables the README's substitutions (# readme: run ...) may use: the demo config trained for
# 4 iterations, validated once, on the demo's data (made by scripts/setup.sh).
SUBSTITUTION_ENV = {
    "README_TINY_TRAIN": " ".join(
        [
            "train_cfg.max_iters=4",
            "train_cfg.val_interval=4",
            "default_hooks.checkpoint.interval=4",
            "default_hooks.logger.interval=1",
            "param_scheduler.0.end=1",
            "param_scheduler.1.begin=1",
            "param_scheduler.1.end=4",
            "train_dataloader.batch_size=2",
            "train_dataloader.num_workers=0",
            "train_dataloader.persistent_workers=False",
            "val_dataloader.num_workers=0",
            "val_dataloader.persistent_workers=False",
            "test_dataloader.num_workers=0",
            "test_dataloader.persistent_workers=False",
        ]
    ),
}


class ReadmeError(ValueError):
    """The README cannot be read as commands (e.g. a marker followed by no command)."""


@dataclass
class Command:
    text: str  # as written in the README (continuation lines joined with newlines)
    line: int  # its first line in the README
    setup: List[str] = field(default_factory=list)  # the block's variable assignments so far
    skip: Optional[str] = None
    fast: bool = False
    substitute: Optional[str] = None
    expect: List[str] = field(default_factory=list)
    needs: List[str] = field(default_factory=list)

    @property
    def run_text(self) -> str:
        return self.substitute or self.text

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0].rstrip(" \\")


@dataclass
class Result:
    command: Command
    status: str  # "passed", "failed", "skipped"
    returncode: Optional[int] = None
    seconds: float = 0.0
    reason: str = ""
    output: str = ""


def _apply_marker(pending: Dict, kind: str, value: str, where: str) -> None:
    if kind == "fast":
        pending["fast"] = True
    elif kind == "skip":
        pending["skip"] = value.strip().strip("()").strip() or "no reason given"
    elif kind in ("run", "expect", "needs"):
        if not value.strip():
            raise ReadmeError(f"{where}: '# readme: {kind}' needs a value")
        if kind == "run":
            pending["substitute"] = value.strip()
        else:
            pending[kind].append(value.strip())
            if kind == "expect":
                try:
                    re.compile(value.strip())
                except re.error as error:
                    raise ReadmeError(f"{where}: bad regex {value.strip()!r}: {error}") from None


def _fresh_markers() -> Dict:
    return dict(skip=None, fast=False, substitute=None, expect=[], needs=[], line=None)


def parse_readme(text: str, name: str = "README.md") -> List[Command]:
    """The commands of ``text``'s ```bash blocks, with their markers."""
    commands: List[Command] = []
    lines = text.splitlines()
    language: Optional[str] = None  # of the block we are in; None: outside any block
    setup: List[str] = []
    block_skip: Optional[str] = None  # a skip marker before the block's first command
    first_in_block = False
    pending = _fresh_markers()
    index = 0
    while index < len(lines):
        raw, where = lines[index], f"{name}:{index + 1}"
        index += 1
        fence = FENCE.match(raw)
        if fence and language is None:
            language, setup = fence.group(1) or "text", []
            block_skip, first_in_block = None, True
            continue
        if fence:
            if pending["line"] is not None:
                raise ReadmeError(
                    f"{name}:{pending['line']}: marker(s) with no command before the block ends"
                )
            language = None
            continue
        stripped = raw.strip()
        if language != "bash" or not stripped:
            continue
        if stripped.startswith("#"):
            marker = MARKER.match(stripped)
            if marker:
                _apply_marker(pending, marker.group(1), marker.group(2), where)
                pending["line"] = pending["line"] or index
            continue
        start, body = index, [raw.rstrip()]
        while body[-1].endswith("\\") and index < len(lines):
            body.append(lines[index].rstrip())
            index += 1
        joined = "\n".join(body)
        if ASSIGNMENT.match(joined.strip()) and pending["line"] is None:
            setup.append(joined.strip())
            continue
        if first_in_block:
            block_skip, first_in_block = pending["skip"], False
        commands.append(
            Command(
                text=joined,
                line=start,
                setup=list(setup),
                skip=pending["skip"] or block_skip,
                fast=pending["fast"],
                substitute=pending["substitute"],
                expect=pending["expect"],
                needs=pending["needs"],
            )
        )
        pending = _fresh_markers()
    if language is not None:
        raise ReadmeError(f"{name}: a code block is not closed")
    return commands


def run_command(command: Command, timeout: float, allow_missing: bool) -> Result:
    missing = [p for p in command.needs if not osp.exists(osp.join(REPO, p))]
    if missing:
        reason = f"needs {', '.join(missing)} (made by bash scripts/setup.sh)"
        return Result(command, "skipped" if allow_missing else "failed", reason=reason)
    script = "\n".join(["set -eo pipefail", *command.setup, command.run_text])
    env = dict(os.environ, **SUBSTITUTION_ENV)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            ["bash", "-c", script],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as error:
        output = error.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        return Result(
            command,
            "failed",
            seconds=time.perf_counter() - start,
            reason=f"timed out after {timeout:g} s",
            output=output,
        )
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return Result(command, "failed", proc.returncode, seconds, "non-zero exit", output)
    absent = [p for p in command.expect if not re.search(p, output, re.MULTILINE)]
    if absent:
        reason = "expected in the output, not found: " + ", ".join(f"/{p}/" for p in absent)
        return Result(command, "failed", proc.returncode, seconds, reason, output)
    return Result(command, "passed", proc.returncode, seconds, output=output)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def report(result: Result, verbose: bool, tail: int = 25) -> str:
    command = result.command
    lines = []
    if result.status == "skipped" and command.skip:
        return f"  skipped (README line {command.line}): {command.skip}"
    if result.status == "skipped":
        return f"  skipped (README line {command.line}): {result.reason}"
    exit_text = "no exit" if result.returncode is None else f"exit {result.returncode}"
    word = "ok" if result.status == "passed" else "FAILED"
    lines.append(f"  {word}: {exit_text}, {result.seconds:.1f} s")
    if result.status == "failed":
        lines.append(f"  reason: {result.reason}")
    if result.output and (verbose or result.status == "failed"):
        shown = result.output.splitlines()
        if not verbose:
            shown = shown[-tail:]
        lines.append(_indent("\n".join(shown), "    | "))
    return "\n".join(lines)


def describe(command: Command) -> str:
    head = f"$ {_indent(command.run_text, '  ').strip()}"
    if command.substitute:
        head += f"\n  (in place of README line {command.line}: {command.first_line})"
    marks = (["fast"] if command.fast else []) + [f"needs {p}" for p in command.needs]
    if command.skip:
        marks.append(f"skip: {command.skip}")
    if marks:
        head += f"\n  [{'; '.join(marks)}]"
    for pattern in command.expect:
        head += f"\n  expect /{pattern}/"
    return head


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--readme",
        default=osp.join(REPO, "README.md"),
        help="the markdown file (default the repository's README.md)",
    )
    parser.add_argument("--fast", action="store_true", help="only the commands marked fast")
    parser.add_argument(
        "--only", metavar="REGEX", help="only commands whose README text matches (default all)"
    )
    parser.add_argument(
        "--list", action="store_true", help="print the commands and their markers, run nothing"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds per command before it counts as failed (default 1800)",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="skip (rather than fail) commands whose '# readme: needs' path is absent",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every command's output")
    return parser


def select(commands: Sequence[Command], fast: bool, only: Optional[str]) -> List[Command]:
    chosen = [c for c in commands if c.fast or not fast]
    if only:
        pattern = re.compile(only)
        chosen = [c for c in chosen if pattern.search(c.text) or pattern.search(c.run_text)]
    return chosen


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with open(args.readme, encoding="utf-8") as f:
            commands = parse_readme(f.read(), osp.basename(args.readme))
    except (OSError, ReadmeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    chosen = select(commands, args.fast, args.only)
    subset = " (fast subset)" if args.fast else ""
    print(f"{len(chosen)} of {len(commands)} README commands{subset}, from {REPO}", flush=True)
    if args.list:
        for number, command in enumerate(chosen, 1):
            print(f"[{number}/{len(chosen)}] {describe(command)}")
        return 0
    results, start = [], time.perf_counter()
    for number, command in enumerate(chosen, 1):
        print(f"[{number}/{len(chosen)}] {describe(command)}", flush=True)
        if command.skip:
            result = Result(command, "skipped")
        else:
            result = run_command(command, args.timeout, args.allow_missing)
        results.append(result)
        print(report(result, args.verbose), flush=True)
    passed = sum(r.status == "passed" for r in results)
    failed = [r for r in results if r.status == "failed"]
    skipped = len(results) - passed - len(failed)
    print(f"{skipped} skipped; {time.perf_counter() - start:.0f} s in all")
    for result in failed:
        print(f"failed: README line {result.command.line}: {result.command.first_line}")
    print(f"{passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
