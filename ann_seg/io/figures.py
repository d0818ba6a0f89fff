"""matplotlib figures: pyplot on a backend that needs no display, saved atomically."""

import os.path as osp
from typing import Any

from .atomic import atomic_write_with


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib  # noqa: PLC0415  (heavy, only for the figures)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (after the Agg backend is chosen)

    return plt


def save_figure(figure: Any, path: str, **savefig_kwargs: Any) -> None:
    """``figure.savefig`` (matplotlib) to ``path`` atomically; the format from the extension."""
    fmt = osp.splitext(path)[1].lstrip(".").lower() or "png"
    atomic_write_with(path, lambda f: figure.savefig(f, format=fmt, **savefig_kwargs))
