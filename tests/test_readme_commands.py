"""The README as a contract: ``scripts/readme_commands.py`` reads its markers, reports each
command, fails on a non-zero exit or a missing expected output; the fast subset runs here."""

import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys

from conftest import REPO

SCRIPT = osp.join(REPO, "scripts", "readme_commands.py")
PLACEHOLDER = re.compile(r"\b(CONFIG|CHECKPOINT|NPROC|WORK_DIR)\b|\[--")


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

```bash
# readme: skip (whole block: not here)
exit 9
false
```

text

```bash
A=hello
# readme: fast
# readme: expect ^hello world$
echo "$A world"
# a plain comment
# readme: run echo substituted
sleep 1000   # long
# readme: needs no/such/file
echo needs
echo two \\
  lines
```

```python
this is not bash
```
"""


def test_parse_markers_blocks_and_assignments():
    runner = load_runner()
    commands = runner.parse_readme(FAKE)
    texts = [c.text for c in commands]
    assert texts == [
        "exit 9",
        "false",
        'echo "$A world"',
        "sleep 1000   # long",
        "echo needs",
        "echo two \\\n  lines",
    ]
    assert [c.skip for c in commands[:3]] == ["whole block: not here"] * 2 + [None]
    echo = commands[2]
    assert echo.fast and echo.expect == ["^hello world$"] and echo.setup == ["A=hello"]
    assert echo.line == 15
    assert commands[3].substitute == "echo substituted" and not commands[3].fast
    assert commands[4].needs == ["no/such/file"] and commands[5].needs == []
    assert [c.fast for c in runner.select(commands, True, None)] == [True]


def test_dangling_marker_and_bad_regex_are_refused():
    runner = load_runner()
    for text, message in [
        ("```bash\necho a\n# readme: fast\n```\n", "no command"),
        ("```bash\n# readme: expect (\necho a\n```\n", "bad regex"),
        ("```bash\necho a\n", "not closed"),
    ]:
        try:
            runner.parse_readme(text)
        except runner.ReadmeError as error:
            assert message in str(error), error
        else:
            raise AssertionError(f"accepted {text!r}")


def test_runner_reports_failures_and_missing_output(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "```bash\n"
        "# readme: expect ^ok$\n"
        "echo ok\n"
        "# readme: expect figure 88\\.53\n"
        "echo figure 12.0\n"
        "exit 3\n"
        "# readme: needs no/such/file\n"
        "echo never\n"
        "# readme: skip (a reason)\n"
        "false\n"
        "```\n"
    )
    proc = run_script("--readme", str(readme))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.strip().splitlines()[-1] == "1 passed, 3 failed", out
    assert "ok: exit 0" in out and "FAILED: exit 3" in out and "skipped (README line 10)" in out
    assert "expected in the output, not found: /figure 88\\.53/" in out
    assert "needs no/such/file (made by bash scripts/setup.sh)" in out
    proc = run_script("--readme", str(readme), "--allow-missing", "--only", "never")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("0 passed, 0 failed")
    readme.write_text("```bash\necho a\n# readme: fast\n```\n")
    proc = run_script("--readme", str(readme))
    assert proc.returncode == 2 and proc.stderr.startswith("error: README.md:3: marker(s)")


def test_every_readme_command_is_runnable_or_marked():
    """A command with a placeholder (CONFIG, [--opt]) cannot work as written: it needs a
    ``# readme: run`` substitute or a ``# readme: skip (reason)``."""
    runner = load_runner()
    with open(osp.join(REPO, "README.md"), encoding="utf-8") as f:
        commands = runner.parse_readme(f.read())
    assert len(commands) >= 20
    unmarked = [
        f"line {c.line}: {c.first_line}"
        for c in commands
        if PLACEHOLDER.search(c.text) and not (c.skip or c.substitute)
    ]
    assert not unmarked, unmarked
    assert all(not PLACEHOLDER.search(c.substitute or "") for c in commands)
    assert sum(c.fast for c in commands) >= 4
    first = [c.text.split("#")[0].strip() for c in commands[:2]]
    assert first == ["bash scripts/setup.sh", ".venv/bin/python -m pytest -q -n auto tests"]


def test_fast_readme_commands_pass():
    """The README's ``# readme: fast`` commands, as CI's fast subset (commands that need the
    setup run's demo outputs are skipped when those are absent)."""
    proc = run_script("--fast", "--allow-missing")
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-2000:]
    passed, failed = map(int, re.search(r"^(\d+) passed, (\d+) failed$", out, re.M).groups())
    assert failed == 0 and passed >= 3, out
