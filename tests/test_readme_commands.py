"""The documentation as a contract: ``scripts/readme_commands.py`` reads the HTML-comment
markers before the ```bash blocks of README.md and docs/*.md, reports each command, fails on a
non-zero exit, a missing expected output or an undefined variable; the fast subset runs here.
Also: the README stays a front page, every docs page opens with what it is for, and every
relative link and image of the documentation resolves."""

import glob
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys

from _helpers import REPO

SCRIPT = osp.join(REPO, "scripts", "readme_commands.py")
PLACEHOLDER = re.compile(r"\b(CONFIG|CHECKPOINT|NPROC|WORK_DIR|INPUT)\b|\[--")
PAGES = [osp.join(REPO, "README.md")] + sorted(glob.glob(osp.join(REPO, "docs", "*.md")))


def load_runner():
    spec = importlib.util.spec_from_file_location("readme_commands", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args, timeout=600):
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")),
    )


FAKE = """# title

<!-- readme: skip (whole block: not here) -->
```bash
exit 9
false
```

text

<!-- readme: fast -->
<!-- readme: expect ^hello world$ -->
```bash
A=hello
OPTS="x=1 y=2"
echo "$A world"
# a plain comment
echo two \\
  lines $OPTS
```

<!-- readme: run echo substituted -->
<!-- readme: run echo again -->
<!-- readme: needs no/such/file -->

```bash
sleep 1000   # long
sleep 2000
```

```python
print("python blocks are never run")
```

```text
ann-seg infer CONFIG CHECKPOINT INPUT [--out-dir DIR]
```
"""


def test_parse_markers_blocks_and_assignments():
    runner = load_runner()
    commands = runner.parse_page(FAKE)
    texts = [c.text for c in commands]
    assert texts == [
        "exit 9",
        "false",
        'echo "$A world"',
        "echo two \\\n  lines $OPTS",
        "echo substituted",
        "echo again",
    ]
    assert [c.skip for c in commands] == ["whole block: not here"] * 2 + [None] * 4
    echo, two = commands[2], commands[3]
    assert echo.fast and two.fast and echo.expect == two.expect == ["^hello world$"]
    assert echo.setup == ["A=hello", 'OPTS="x=1 y=2"'] and echo.line == 16
    assert not echo.last_in_block and two.last_in_block
    assert commands[4].replaces == "sleep 1000   # long" and not commands[4].fast
    assert commands[4].needs == commands[5].needs == ["no/such/file"]
    assert commands[0].block == commands[1].block != echo.block
    assert [c.text for c in runner.select(commands, True, None)] == texts[2:4]
    assert all(not c.undefined_variables() for c in commands)


def test_undefined_variables_are_found_outside_single_quotes():
    runner = load_runner()
    assert runner.undefined_variables("echo $A \"${B}\" '$C' $HOME", ["A=1"]) == ["B"]
    assert runner.undefined_variables("ann-seg train $X --cfg-options $X", []) == ["X"]


def test_bad_pages_are_refused():
    runner = load_runner()
    for text, message in [
        ("<!-- readme: fast -->\n\nsome text\n```bash\necho a\n```\n", "not followed by a code"),
        ("<!-- readme: fast -->\n", "not followed by a code"),
        ("<!-- readme: fast -->\n```python\nx = 1\n```\n", "only ```bash blocks run"),
        ("```bash\n# readme: fast\necho a\n```\n", "old marker form"),
        ("<!-- readme: later -->\n```bash\necho a\n```\n", "unknown marker"),
        ("<!-- readme: expect ( -->\n```bash\necho a\n```\n", "bad regex"),
        ("<!-- readme: needs -->\n```bash\necho a\n```\n", "needs a value"),
        ("```bash\necho a\n", "not closed"),
    ]:
        try:
            runner.parse_page(text)
        except runner.ReadmeError as error:
            assert message in str(error), (text, error)
        else:
            raise AssertionError(f"accepted {text!r}")


def test_runner_reports_failures_and_missing_output(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- readme: expect ^ok$ -->\n"
        "```bash\necho ok\n```\n\n"
        "<!-- readme: expect figure 88\\.53 -->\n"
        "```bash\necho figure 12.0\n```\n\n"
        "```bash\nexit 3\n```\n\n"
        "<!-- readme: needs no/such/file -->\n"
        "```bash\necho never\n```\n\n"
        "<!-- readme: skip (a reason) -->\n"
        "```bash\nfalse\n```\n\n"
        "```bash\necho $UNDEFINED_HERE\n```\n\n"
        "<!-- readme: expect ^first$ -->\n"
        "<!-- readme: expect ^second$ -->\n"
        "```bash\necho first\necho second\n```\n\n"
        "<!-- readme: expect ^/ -->\n"
        "```bash\necho $PATH | tr : '\\n' | head -1\n```\n"
    )
    proc = run_script(str(page), "-v")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.strip().splitlines()[-1] == "4 passed, 4 failed", out
    assert "ok: exit 0" in out and "FAILED: exit 3" in out and "skipped (" in out
    assert "not found: /figure 88\\.53/" in out
    assert "needs no/such/file (made by bash scripts/setup.sh)" in out
    assert "uses $UNDEFINED_HERE, assigned nowhere in its block" in out
    assert f"| {osp.join(REPO, '.venv', 'bin')}" in out  # .venv/bin first on PATH
    proc = run_script(str(page), "--allow-missing", "--only", "never")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("0 passed, 0 failed")
    page.write_text("```bash\necho a\n```\n<!-- readme: fast -->\n")
    proc = run_script(str(page))
    assert proc.returncode == 2 and "marker(s) not followed by a code block" in proc.stderr


def documented_commands():
    runner = load_runner()
    return runner.load_pages(PAGES)


def test_every_documented_command_runs_as_written_or_is_marked():
    """A command with a placeholder (CONFIG, [--opt]) cannot work as written: usage lines go
    in ```text blocks, and a runnable block needs a stand-in (``run``) or a ``skip (reason)``.
    No command uses a variable its block does not assign."""
    commands = documented_commands()
    assert len(commands) >= 40
    files = {c.file for c in commands}
    assert {"README.md", "docs/inference.md", "docs/training.md"} <= files
    unmarked = [
        f"{c.where}: {c.first_line}"
        for c in commands
        if PLACEHOLDER.search(c.written) and not (c.skip or c.replaces)
    ]
    assert not unmarked, unmarked
    assert all(not PLACEHOLDER.search(c.text) for c in commands if c.replaces)
    undefined = [f"{c.where}: {c.undefined_variables()}" for c in commands]
    undefined = [entry for entry in undefined if not entry.endswith(": []")]
    assert not undefined, undefined
    assert not [c.where for c in commands if "README_TINY_TRAIN" in c.text]
    assert sum(c.fast for c in commands) >= 4
    readme = [c for c in commands if c.file == "README.md"]
    first = [c.written.split("#")[0].strip() for c in readme[:2]]
    assert first == ["bash scripts/setup.sh", "bash scripts/setup.sh"]  # one block, two stand-ins
    with open(PAGES[0], encoding="utf-8") as f:
        block = re.search(r"```bash\n(.*?)```", f.read(), re.S).group(1)
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    assert lines == ["bash scripts/setup.sh", ".venv/bin/python -m pytest -q -n auto"]


def test_readme_is_a_front_page_and_docs_pages_say_what_they_are_for():
    with open(PAGES[0], encoding="utf-8") as f:
        readme = f.read()
    assert len(readme.splitlines()) <= 250
    assert "# readme:" not in readme
    first_screen = "\n".join(readme.splitlines()[:45])
    for job in ["infer", "demo", "train", "test", "benchmark"]:
        assert f"ann-seg {job}" in first_screen, f"ann-seg {job} is not on the first screen"
    for page in PAGES[1:]:
        with open(page, encoding="utf-8") as f:
            lines = f.read().splitlines()
        assert lines[0].startswith("# ") and not lines[1].strip(), page
        assert lines[2][:1].isalpha() and len(lines[2]) > 40, f"{page}: no opening paragraph"
        assert not any("# readme:" in line for line in lines), page


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: str) -> set:
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", text, re.M)}


def test_documentation_links_resolve():
    broken = []
    for page in PAGES:
        with open(page, encoding="utf-8") as f:
            text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = osp.normpath(osp.join(osp.dirname(page), path)) if path else page
            if not osp.exists(resolved):
                broken.append(f"{osp.relpath(page, REPO)}: {target}")
            elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
                broken.append(f"{osp.relpath(page, REPO)}: {target} (no such heading)")
    assert not broken, broken


def test_fast_documented_commands_pass():
    """The ``fast`` blocks of README.md and docs/*.md, as CI's fast subset (commands that need
    the setup run's demo outputs are skipped when those are absent)."""
    proc = run_script("--fast", "--allow-missing")
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-2000:]
    passed, failed = map(int, re.search(r"^(\d+) passed, (\d+) failed$", out, re.M).groups())
    assert failed == 0 and passed >= 3, out
