"""Run every command of README.md and docs/*.md: the documentation as a contract.

The commands are the lines of the ```bash blocks. Each runs from the repository root (after
``bash scripts/setup.sh``) in ``bash -c`` with ``set -eo pipefail`` and the repository's
``.venv/bin`` first on ``PATH`` (so ``ann-seg`` and ``python`` are the environment's, as after
``source .venv/bin/activate``). Comment lines are skipped; shell variables assigned on lines of
their own (``A=configs/x.py``, ``OPTS="a=1 b=2"``) stay set for the rest of their block, and a
command that uses a variable its block does not assign fails without running (every command
must run as written).

Markers are HTML comments (invisible on the rendered page, never inside the copied block) on
the lines just before a fenced block, one per line; they apply to the whole block:

  <!-- readme: skip (reason) -->     not run; the reason is printed
  <!-- readme: fast -->              part of the fast subset (--fast; CI and the test suite)
  <!-- readme: expect REGEX -->      the block's output (stdout + stderr of its commands, in
                                     order) must match the regex
  <!-- readme: needs PATH -->        the block needs this file or folder (e.g. the demo's
                                     checkpoint); absent: a failure, or a skip with
                                     --allow-missing
  <!-- readme: run COMMAND -->       run COMMAND in place of the block's commands (several run
                                     markers: run them in order); for long or big runs only

A command fails if it exits non-zero, runs past --timeout or (the block's last command) misses
an expected pattern. Prints each command, its exit status and time, and last ``N passed, M
failed``. Exit status 0 if none failed, 1 if some did, 2 for a page it cannot parse (a marker
with no block after it, a marker before a block that is not bash, a ``# readme:`` comment of
the old form inside a block). Needs only the standard library.

Examples:
  .venv/bin/python scripts/readme_commands.py              # README.md and docs/*.md
  .venv/bin/python scripts/readme_commands.py --fast       # the fast subset (about a minute)
  .venv/bin/python scripts/readme_commands.py --list       # what would run, with the markers
  .venv/bin/python scripts/readme_commands.py docs/inference.md --only "ann-seg infer" -v
  .venv/bin/python scripts/readme_commands.py --exclude scripts/setup.sh   # venv shared
"""

import argparse
import glob
import os
import os.path as osp
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
VENV_BIN = osp.join(REPO, ".venv", "bin")
KINDS = ("skip", "fast", "run", "expect", "needs")
MARKER = re.compile(r"^\s*<!--\s*readme:\s*(?P<kind>[a-z]+)\b\s*(?P<value>.*?)\s*-->\s*$")
OLD_MARKER = re.compile(r"^\s*#\s*readme:")
ASSIGNMENT = re.compile(
    r"""^(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*=("[^"`$]*"|'[^']*'|[^\s;&|<>()`'"]*)$"""
)
VARIABLE = re.compile(r"\$(?:\{)?([A-Za-z_][A-Za-z0-9_]*)")
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([A-Za-z0-9_+-]*)\s*$")
RUN_LANGUAGES = ("bash",)
# variables every shell has; anything else must be assigned in the block that uses it
ENVIRONMENT = {"HOME", "PATH", "PWD"}


class ReadmeError(ValueError):
    """A page cannot be read as commands (e.g. a marker followed by no bash block)."""


@dataclass
class Command:
    text: str  # what runs: as written (continuation lines joined) or a run marker's command
    file: str  # the page, relative to the repository
    line: int  # its first line on the page (for a substitute: the block's first command's)
    setup: List[str] = field(default_factory=list)  # the block's variable assignments so far
    skip: Optional[str] = None
    fast: bool = False
    replaces: Optional[str] = None  # for a run marker's command: the block's first command
    expect: List[str] = field(default_factory=list)  # the block's; checked after its last
    needs: List[str] = field(default_factory=list)
    block: int = 0  # commands of one block share this number (per page, from 1)
    last_in_block: bool = True

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0].rstrip(" \\")

    @property
    def written(self) -> str:
        """The text as the page shows it (for a substitute: the command it stands in for)."""
        return self.replaces or self.text

    def undefined_variables(self) -> List[str]:
        return undefined_variables(self.text, self.setup)


@dataclass
class Result:
    command: Command
    status: str  # "passed", "failed", "skipped"
    returncode: Optional[int] = None
    seconds: float = 0.0
    reason: str = ""
    output: str = ""


def undefined_variables(text: str, setup: Sequence[str]) -> List[str]:
    """``$NAME`` / ``${NAME}`` in ``text`` (outside single quotes) that neither ``setup`` (the
    block's assignments) nor the shell itself (``ENVIRONMENT``) defines."""
    defined = set(ENVIRONMENT)
    for assignment in setup:
        defined.add(assignment.split("=", 1)[0].split()[-1])
    unquoted = re.sub(r"'[^']*'", "", text)
    names = []
    for name in VARIABLE.findall(unquoted):
        if name not in defined and name not in names:
            names.append(name)
    return names


def _fresh_markers() -> Dict:
    return dict(skip=None, fast=False, run=[], expect=[], needs=[], line=None)


def _apply_marker(pending: Dict, kind: str, value: str, where: str) -> None:
    if kind not in KINDS:
        raise ReadmeError(f"{where}: unknown marker 'readme: {kind}' (one of {', '.join(KINDS)})")
    value = value.strip()
    if kind == "fast":
        pending["fast"] = True
    elif kind == "skip":
        pending["skip"] = value.strip("()").strip() or "no reason given"
    else:
        if not value:
            raise ReadmeError(f"{where}: '<!-- readme: {kind} -->' needs a value")
        if kind == "expect":
            try:
                re.compile(value)
            except re.error as error:
                raise ReadmeError(f"{where}: bad regex {value!r}: {error}") from None
        pending[kind].append(value)


def _block_commands(lines: List[str], first: int, name: str) -> List[tuple]:
    """(text, line, setup) of a bash block's commands; ``lines`` are its inner lines, the first
    on page line ``first``."""
    found, setup, index = [], [], 0
    while index < len(lines):
        raw, number = lines[index], first + index
        index += 1
        stripped = raw.strip()
        if not stripped:
            continue
        if OLD_MARKER.match(stripped):
            raise ReadmeError(
                f"{name}:{number}: '# readme:' inside a block is the old marker form; "
                "write '<!-- readme: ... -->' on the line before the block"
            )
        if stripped.startswith("#"):
            continue
        body = [raw.rstrip()]
        while body[-1].endswith("\\") and index < len(lines):
            body.append(lines[index].rstrip())
            index += 1
        joined = "\n".join(body)
        if ASSIGNMENT.match(joined.strip()):
            setup.append(joined.strip())
            continue
        found.append((joined, number, list(setup)))
    return found


def parse_page(text: str, name: str = "README.md") -> List[Command]:
    """The commands of ``text``'s ```bash blocks, with their blocks' markers."""
    commands: List[Command] = []
    lines = text.splitlines()
    pending = _fresh_markers()
    block_number = 0
    index = 0
    while index < len(lines):
        raw, where = lines[index], f"{name}:{index + 1}"
        index += 1
        marker = MARKER.match(raw)
        if marker:
            _apply_marker(pending, marker.group("kind"), marker.group("value"), where)
            pending["line"] = pending["line"] or index
            continue
        fence = FENCE.match(raw)
        if not fence:
            if raw.strip() and pending["line"] is not None:
                raise ReadmeError(
                    f"{name}:{pending['line']}: marker(s) not followed by a code block"
                )
            continue
        # a fenced block: find its end
        opener, language = fence.group(1), fence.group(2) or "text"
        start = index  # page line of the block's first inner line is start + 1
        closing = re.compile(rf"^\s*{re.escape(opener[0])}{{{len(opener)},}}\s*$")
        inner = []
        while index < len(lines) and not closing.match(lines[index]):
            inner.append(lines[index])
            index += 1
        if index >= len(lines):
            raise ReadmeError(f"{name}:{start}: a code block is not closed")
        index += 1  # the closing fence
        if language not in RUN_LANGUAGES:
            if pending["line"] is not None:
                raise ReadmeError(
                    f"{name}:{pending['line']}: marker(s) before a ```{language} block "
                    "(only ```bash blocks run)"
                )
            if any(OLD_MARKER.match(line.strip()) for line in inner):
                raise ReadmeError(f"{name}:{start}: '# readme:' inside a ```{language} block")
            continue
        block_number += 1
        written = _block_commands(inner, start + 1, name)
        if not written and not pending["run"]:
            if pending["line"] is not None:
                raise ReadmeError(f"{name}:{pending['line']}: marker(s) before an empty block")
            pending = _fresh_markers()
            continue
        common = dict(
            file=name,
            skip=pending["skip"],
            fast=pending["fast"],
            expect=list(pending["expect"]),
            needs=list(pending["needs"]),
            block=block_number,
        )
        if pending["run"]:
            replaced = written[0][0] if written else "(an empty block)"
            line = written[0][1] if written else start + 1
            setup = written[-1][2] if written else []
            block = [
                Command(text=run, line=line, setup=list(setup), replaces=replaced, **common)
                for run in pending["run"]
            ]
        else:
            block = [
                Command(text=text_, line=line, setup=setup, **common)
                for text_, line, setup in written
            ]
        for command in block[:-1]:
            command.last_in_block = False
        commands.extend(block)
        pending = _fresh_markers()
    if pending["line"] is not None:
        raise ReadmeError(f"{name}:{pending['line']}: marker(s) not followed by a code block")
    return commands


def parse_readme(text: str, name: str = "README.md") -> List[Command]:
    """``parse_page`` under its earlier name."""
    return parse_page(text, name)


def default_pages() -> List[str]:
    """README.md, then docs/*.md in name order."""
    pages = [osp.join(REPO, "README.md")]
    pages += sorted(glob.glob(osp.join(REPO, "docs", "*.md")))
    return [p for p in pages if osp.exists(p)]


def load_pages(paths: Sequence[str]) -> List[Command]:
    commands: List[Command] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        absolute = osp.abspath(path)
        name = osp.relpath(absolute, REPO) if absolute.startswith(REPO + os.sep) else path
        commands.extend(parse_page(text, name))
    return commands


def command_environment() -> Dict[str, str]:
    """The runner's environment with the repository's ``.venv/bin`` first on ``PATH``."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([VENV_BIN, env.get("PATH", "")])
    env["VIRTUAL_ENV"] = osp.dirname(VENV_BIN)
    env.pop("PYTHONHOME", None)
    return env


def run_command(command: Command, timeout: float, allow_missing: bool) -> Result:
    missing = [p for p in command.needs if not osp.exists(osp.join(REPO, p))]
    if missing:
        reason = f"needs {', '.join(missing)} (made by bash scripts/setup.sh)"
        return Result(command, "skipped" if allow_missing else "failed", reason=reason)
    undefined = command.undefined_variables()
    if undefined:
        names = ", ".join(f"${name}" for name in undefined)
        return Result(command, "failed", reason=f"uses {names}, assigned nowhere in its block")
    script = "\n".join(["set -eo pipefail", *command.setup, command.text])
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            ["bash", "-c", script],
            cwd=REPO,
            env=command_environment(),
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
    return Result(command, "passed", proc.returncode, seconds, output=output)


def check_expected(result: Result, block_output: str) -> Result:
    """Fail ``result`` (its block's last command) if the block's output misses a pattern."""
    absent = [p for p in result.command.expect if not re.search(p, block_output, re.MULTILINE)]
    if result.status == "passed" and absent:
        result.status = "failed"
        result.reason = "expected in the block's output, not found: " + ", ".join(
            f"/{p}/" for p in absent
        )
    return result


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def report(result: Result, verbose: bool, tail: int = 25) -> str:
    command = result.command
    if result.status == "skipped":
        return f"  skipped ({command.where}): {command.skip or result.reason}"
    lines = []
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
    head = f"{command.where}\n  $ {_indent(command.text, '  ').strip()}"
    if command.replaces:
        first = command.replaces.splitlines()[0].rstrip(" \\")
        head += f"\n  (a stand-in for the block that starts: {first})"
    marks = (["fast"] if command.fast else []) + [f"needs {p}" for p in command.needs]
    if command.skip:
        marks.append(f"skip: {command.skip}")
    if marks:
        head += f"\n  [{'; '.join(marks)}]"
    if command.last_in_block:
        for pattern in command.expect:
            head += f"\n  expect /{pattern}/"
    return head


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "pages",
        nargs="*",
        metavar="PAGE",
        help="markdown files (default: README.md and docs/*.md of the repository)",
    )
    parser.add_argument(
        "--readme",
        action="append",
        metavar="PAGE",
        help="a markdown file, as PAGE (repeatable; kept for older callers)",
    )
    parser.add_argument("--fast", action="store_true", help="only the blocks marked fast")
    parser.add_argument(
        "--only", metavar="REGEX", help="only commands whose text matches (default all)"
    )
    parser.add_argument(
        "--exclude",
        metavar="REGEX",
        help="leave out commands whose text matches (e.g. the setup where the environment is "
        "shared)",
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
        help="skip (rather than fail) commands whose 'needs' path is absent",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every command's output")
    return parser


def select(
    commands: Sequence[Command], fast: bool, only: Optional[str], exclude: Optional[str] = None
) -> List[Command]:
    chosen = [c for c in commands if c.fast or not fast]
    if only:
        pattern = re.compile(only)
        chosen = [c for c in chosen if pattern.search(c.text) or pattern.search(c.written)]
    if exclude:
        pattern = re.compile(exclude)
        chosen = [c for c in chosen if not pattern.search(c.text)]
    return chosen


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    pages = list(args.pages) + list(args.readme or []) or default_pages()
    try:
        commands = load_pages(pages)
    except (OSError, ReadmeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    chosen = select(commands, args.fast, args.only, args.exclude)
    subset = " (fast subset)" if args.fast else ""
    print(
        f"{len(chosen)} of {len(commands)} documented commands{subset} from "
        f"{len(pages)} page(s), run in {REPO} with {VENV_BIN} first on PATH",
        flush=True,
    )
    if args.list:
        for number, command in enumerate(chosen, 1):
            print(f"[{number}/{len(chosen)}] {describe(command)}")
        return 0
    results, start = [], time.perf_counter()
    block_output: Dict[tuple, str] = {}
    for number, command in enumerate(chosen, 1):
        print(f"[{number}/{len(chosen)}] {describe(command)}", flush=True)
        if command.skip:
            result = Result(command, "skipped")
        else:
            result = run_command(command, args.timeout, args.allow_missing)
        key = (command.file, command.block)
        block_output[key] = block_output.get(key, "") + result.output
        following = chosen[number] if number < len(chosen) else None
        last = following is None or (following.file, following.block) != key
        if last and command.expect and result.status == "passed":
            result = check_expected(result, block_output[key])
        results.append(result)
        print(report(result, args.verbose), flush=True)
    passed = sum(r.status == "passed" for r in results)
    failed = [r for r in results if r.status == "failed"]
    skipped = len(results) - passed - len(failed)
    print(f"{skipped} skipped; {time.perf_counter() - start:.0f} s in all")
    for result in failed:
        print(f"failed: {result.command.where}: {result.command.first_line}")
    print(f"{passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
