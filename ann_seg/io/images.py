"""Decoding images for inference: any 8/16-bit image OpenCV or PIL recognises, as BGR uint8.

Grayscale is replicated to 3 channels, alpha dropped (not composited), 16-bit scaled to 8 bits
(``round(v / 257)``), EXIF orientation applied. Empty, unreadable, undecodable, float-valued
and over-large images raise ``ImageError`` with the reason. A file over ``max_bytes`` is
refused unread; otherwise its first ``HEAD_BYTES`` are read, and a header declaring more than
``max_pixels``, or content that neither Pillow nor OpenCV recognises, is refused before the
rest is read.
"""

import io
import os
import os.path as osp
import stat
import warnings
from typing import Optional, Tuple

import cv2
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 50_000_000
BYTES_PER_PIXEL = 8  # 16-bit RGBA, uncompressed: no image file of N pixels needs much more
METADATA_MARGIN = 64 * 2**20  # bytes: headers, ICC profiles, EXIF, thumbnails
HEAD_BYTES = 2**20
_OPENCV_FORMATS = ("BMP", "JPEG", "JPEG2000", "PNG", "PPM", "TIFF", "WEBP")  # PIL's names


class ImageError(Exception):
    """One image cannot be used; ``str(error)`` is the reason reported for it."""


def _probe_header(data: bytes, max_pixels: int) -> Optional[Tuple[str, str, Tuple[int, int]]]:
    """``(format, mode, (width, height))`` from the header (no pixel decoding), or ``None``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.format or "", image.mode, image.size
    except Image.DecompressionBombError as error:
        if max_pixels <= 2 * (Image.MAX_IMAGE_PIXELS or 0):
            raise ImageError(f"too large: {error}") from None
        return None
    except Exception:  # noqa: BLE001 - not recognised by PIL; OpenCV may still decode it
        return None


def _too_large(width: int, height: int, max_pixels: int) -> ImageError:
    return ImageError(
        f"too large: {width}x{height} = {width * height / 1e6:.1f} MP exceeds the limit of "
        f"{max_pixels / 1e6:g} MP (--max-pixels)"
    )


def default_max_bytes(max_pixels: int) -> int:
    """The largest file read for a ``max_pixels`` limit: 8 bytes per pixel plus 64 MiB
    (464 MiB for the default 50 MP)."""
    return int(max_pixels) * BYTES_PER_PIXEL + METADATA_MARGIN


def _read_bounded(path: str, max_pixels: int, max_bytes: int) -> bytes:
    """The file's bytes, reading at most ``max_bytes``; refused after ``HEAD_BYTES`` when the
    header says too large or nothing recognises the content."""
    try:
        with open(path, "rb") as f:
            head = f.read(min(HEAD_BYTES, max_bytes + 1))
            header = _probe_header(head, max_pixels)
            if header is None and not cv2.haveImageReader(path):
                raise ImageError("not an image: no decoder recognises the content")
            if header is not None and header[2][0] * header[2][1] > max_pixels:
                raise _too_large(*header[2], max_pixels)
            data = head + f.read(max_bytes + 1 - len(head))
    except OSError as error:
        raise ImageError(f"cannot read file: {error.strerror or error}") from None
    if len(data) > max_bytes:  # grew since stat'ed
        raise ImageError(f"too large: more than {max_bytes} bytes (max_bytes); not read whole")
    return data


def read_image(
    path: str, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: Optional[int] = None
) -> Tuple[np.ndarray, dict]:
    """Read ``path`` as a BGR ``uint8`` (H, W, 3) image (mmcv's channel order) plus a dict
    describing the source (``format``, ``mode``, ``bit_depth``) and the ``conversions`` made.
    Files over ``max_bytes`` (default ``default_max_bytes(max_pixels)``) are not read.
    Raises ``ImageError`` with the reason when it cannot be used."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as error:
        raise ImageError(f"cannot read file: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file")
    if info.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    if max_bytes is None:
        max_bytes = default_max_bytes(max_pixels)
        why = f"{BYTES_PER_PIXEL} bytes per pixel of --max-pixels {max_pixels:g} + 64 MiB"
    else:
        why = "max_bytes"
    if info.st_size > max_bytes:
        raise ImageError(
            f"too large: {info.st_size} bytes exceeds the limit of {max_bytes} bytes ({why}); "
            "not read"
        )
    data = _read_bounded(path, max_pixels, max_bytes)
    header = _probe_header(data, max_pixels)
    if header is not None and header[2][0] * header[2][1] > max_pixels:
        raise _too_large(*header[2], max_pixels)
    try:
        image = cv2.imdecode(
            np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
        )
    except cv2.error as error:
        raise ImageError(f"cannot decode: {str(error).strip().splitlines()[-1]}") from None
    if image is None:
        if header is None:
            raise ImageError("not an image: no decoder recognises the content")
        if header[0] in _OPENCV_FORMATS:
            raise ImageError(f"corrupt or truncated {header[0]} data")
        raise ImageError(f"unsupported image format {header[0] or '(unknown)'}")
    h, w = image.shape[:2]
    if h * w > max_pixels:
        raise _too_large(w, h, max_pixels)
    conversions = []
    depth = image.dtype.itemsize * 8
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
        conversions.append("16-bit scaled to 8-bit (round(v / 257))")
    elif image.dtype != np.uint8:
        raise ImageError(
            f"unsupported pixel type {image.dtype} (8- and 16-bit integer images are supported)"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        conversions.append("grayscale replicated to 3 channels")
    elif image.shape[2] == 4:
        image = np.ascontiguousarray(image[..., :3])
    elif image.shape[2] != 3:
        raise ImageError(f"unsupported channel count {image.shape[2]}")
    mode = header[1] if header is not None else f"{depth}-bit"
    if "A" in mode or "a" in mode:
        conversions.append("alpha channel dropped (not composited)")
    source = {
        "format": header[0] if header is not None else osp.splitext(path)[1].lstrip("."),
        "mode": mode,
        "bit_depth": depth,
    }
    return image, dict(source, conversions=conversions)
