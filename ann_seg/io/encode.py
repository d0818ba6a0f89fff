"""Encoding inference outputs: label maps (palette PNG), colour overlays (JPEG), logits (NPY)."""

import io
from typing import Dict, Sequence

import cv2
import numpy as np
from PIL import Image

_FLOAT16_MAX = float(np.finfo(np.float16).max)


def encode_label_png(label: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """Class ids as pixel values: a palette PNG for ids < 256, else a 16-bit grey PNG."""
    if int(label.max(initial=0)) < 256 and len(palette) <= 256:
        image = Image.fromarray(label.astype(np.uint8))
        image.putpalette([int(v) for colour in palette for v in colour])
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    ok, encoded = cv2.imencode(".png", label.astype(np.uint16))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def read_label_png(path: str) -> np.ndarray:
    """Class ids from a label PNG written by ``encode_label_png``."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L", "I;16", "I"):
            raise ValueError(f"{path}: unexpected label PNG mode {image.mode}")
        return np.array(image)


def render_overlay(
    image_bgr: np.ndarray, label: np.ndarray, palette: Sequence[Sequence[int]], opacity: float
) -> np.ndarray:
    """``(1 - opacity) * image + opacity * palette[label]`` (BGR ``uint8``)."""
    colours = np.asarray(palette, dtype=np.uint8)[:, ::-1]
    colour_map = colours[np.clip(label, 0, len(colours) - 1)]
    return cv2.addWeighted(image_bgr, 1.0 - opacity, colour_map, opacity, 0.0)


def encode_jpeg(image_bgr: np.ndarray, quality: int = 90) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


def encode_logits(logits: np.ndarray, fmt: str) -> bytes:
    """float16 ``(C, H, W)`` as ``.npy`` or compressed ``.npz`` (key ``logits``)."""
    half = np.clip(logits, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)
    buffer = io.BytesIO()
    if fmt == "npz":
        np.savez_compressed(buffer, logits=half)
    else:
        np.save(buffer, half)
    return buffer.getvalue()


def class_pixel_counts(label: np.ndarray, num_classes: int) -> Dict[str, int]:
    """``{class id: pixels}`` for the classes present."""
    counts = np.bincount(label.ravel().astype(np.int64), minlength=num_classes)
    return {str(i): int(n) for i, n in enumerate(counts) if n}
