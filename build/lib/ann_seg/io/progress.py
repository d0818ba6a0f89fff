"""One progress helper for every long loop (data generation, folder inference, benchmarks)."""

import sys
from typing import Optional, TextIO

from mmengine.utils import ProgressBar


class Progress:
    """mmengine's ``ProgressBar`` (count, rate, elapsed, ETA) on ``stream`` (stderr by
    default), or nothing when disabled or ``total`` is 0; ``close()`` ends the line."""

    def __init__(self, total: int, enabled: bool = True, stream: Optional[TextIO] = None):
        self.stream = stream or sys.stderr  # the stream of now, not of import time
        self.bar = ProgressBar(total, file=self.stream) if enabled and total > 0 else None

    def update(self, count: int = 1) -> None:
        if self.bar is not None:
            for _ in range(count):
                self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
