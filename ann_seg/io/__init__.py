"""File I/O: atomic writes, image decoding, output encoding, progress, tables (no model code:
numpy, OpenCV, PIL, mmengine's progress bar and, on demand, matplotlib)."""

from .atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    default_file_mode,
)
from .encode import (
    class_pixel_counts,
    encode_jpeg,
    encode_label_png,
    encode_logits,
    read_label_png,
    render_overlay,
)
from .figures import pyplot, save_figure
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, read_image
from .progress import Progress
from .tables import markdown_table

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageError",
    "Progress",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_with",
    "class_pixel_counts",
    "default_file_mode",
    "encode_jpeg",
    "encode_label_png",
    "encode_logits",
    "markdown_table",
    "read_image",
    "read_label_png",
    "render_overlay",
    "pyplot",
    "save_figure",
]
