"""File I/O: atomic writes, image and video decoding, output encoding, progress, tables (no
model code: numpy, OpenCV, PIL, mmengine's progress bar and, on demand, matplotlib and PyAV)."""

from .atomic import (
    AtomicFile,
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
from .video import (
    VIDEO_EXTENSIONS,
    LabelVideoWriter,
    OverlayVideoWriter,
    VideoError,
    VideoInfo,
    have_pyav,
    label_colours,
    probe_video,
    read_frames,
    read_label_video,
)

__all__ = [
    "AtomicFile",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageError",
    "LabelVideoWriter",
    "OverlayVideoWriter",
    "Progress",
    "VIDEO_EXTENSIONS",
    "VideoError",
    "VideoInfo",
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
    "have_pyav",
    "label_colours",
    "markdown_table",
    "probe_video",
    "read_frames",
    "read_image",
    "read_label_png",
    "read_label_video",
    "render_overlay",
    "pyplot",
    "save_figure",
]
