"""One progress helper for every long loop (data generation, folder inference, benchmarks)."""

import sys
import time
from typing import Optional, TextIO

LOG_STEPS = 4  # lines written to a non-terminal: at 25, 50, 75 and 100 %


class Progress:
    """mmengine's ``ProgressBar`` (count, rate, elapsed, ETA), redrawn in place, on a terminal
    ``stream`` (stderr by default); elsewhere (a log file, a pipe) ``LOG_STEPS`` plain lines;
    nothing when disabled or ``total`` is 0. ``close()`` ends the line."""

    def __init__(self, total: int, enabled: bool = True, stream: Optional[TextIO] = None):
        self.stream = stream or sys.stderr  # the stream of now, not of import time
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.active = enabled and total > 0
        isatty = getattr(self.stream, "isatty", None)
        self.bar = None
        if self.active and isatty and isatty():
            # mmengine is not in an exported model's minimal runtime: only a terminal needs it
            from mmengine.utils import ProgressBar  # noqa: PLC0415

            self.bar = ProgressBar(total, file=self.stream)
        self.next_line = 1

    def update(self, count: int = 1) -> None:
        if self.bar is not None:
            for _ in range(count):
                self.bar.update()
            return
        if not self.active:
            return
        self.done = min(self.total, self.done + count)
        step = self.done * LOG_STEPS // self.total  # the last quarter reached
        if step >= self.next_line:
            elapsed = time.perf_counter() - self.start
            rate = self.done / elapsed if elapsed > 0 else float("inf")
            self.stream.write(
                f"[{self.done}/{self.total}] {100 * self.done // self.total}%, "
                f"{rate:.2f}/s, {elapsed:.0f} s elapsed\n"
            )
            self.stream.flush()
            self.next_line = step + 1

    def close(self) -> None:
        if self.bar is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.bar, self.active = None, False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
