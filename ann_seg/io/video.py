"""Video I/O for inference: probing, streamed frame decoding, label and overlay video writers.

Decoding uses OpenCV's FFmpeg backend, or PyAV (the optional ``av`` package) for files OpenCV's
build cannot open. Frames come one at a time as BGR ``uint8`` (H, W, 3), so memory stays flat
in the video's length. Frame ``i`` is the ``i``-th decoded frame: ``read_frames(start=k)``
decodes and drops the first ``k`` (a container seek lands on a keyframe by timestamp, which is
not frame-exact for B-frames, variable frame rates or containers without an index).

Writers: ``LabelVideoWriter`` stores class ids losslessly as palette colours (FFV1 in Matroska,
``read_label_video`` maps the colours back to ids); ``OverlayVideoWriter`` stores
``render_overlay`` frames (H.264 in MP4, or MPEG-4 part 2 without PyAV). With PyAV the bytes
are a function of the frames only (bitexact muxing: no random Matroska UIDs, no version string;
fixed encoder threads); OpenCV's Matroska muxer writes random UIDs. Both write a hidden
temporary file beside the target and rename it when closed, deleting it on error.
"""

import contextlib
import functools
import os
import os.path as osp
import stat
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np

from .atomic import AtomicFile
from .encode import render_overlay

VIDEO_EXTENSIONS = (
    ".3gp",
    ".avi",
    ".flv",
    ".m2ts",
    ".m4v",
    ".mkv",
    ".mov",
    ".mp4",
    ".mpeg",
    ".mpg",
    ".mts",
    ".ogv",
    ".ts",
    ".webm",
    ".wmv",
)
BACKENDS = ("opencv", "pyav")
# Containers that store a frame count; others (Matroska, WebM, MPEG-TS) give duration x fps.
_COUNTED_CONTAINERS = (".3gp", ".avi", ".m4v", ".mov", ".mp4")
_MUXERS = {".mkv": "matroska", ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".avi": "avi"}
_X264_OPTIONS = {"crf": "18", "preset": "fast", "threads": "2"}  # fixed threads: same bytes


class VideoError(ValueError):
    """A video cannot be used (or stops decoding); ``str(error)`` names the file and why."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says. ``frames`` is exact when ``frames_exact`` (a count stored in
    MP4/MOV/AVI), otherwise ``round(duration * fps)`` (Matroska, WebM): possibly off by a few
    frames, and 0 when the container gives no duration. ``backend`` decodes it."""

    frames: int
    fps: float
    width: int
    height: int
    backend: str
    frames_exact: bool = True


@functools.cache
def _pyav():
    """PyAV or None: an optional extra (pip install av; exact decode errors, reproducible
    Matroska and H.264), imported on first use (0.2 s)."""
    try:
        import av  # noqa: PLC0415 - optional extra, 0.2 s to import
    except ImportError:
        return None
    return av


def have_pyav() -> bool:
    return _pyav() is not None


def _check_file(path: str) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise VideoError(f"{path}: file not found") from None
    except OSError as error:
        raise VideoError(f"{path}: cannot read file: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise VideoError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")


def _open_capture(path: str, threads: int = 0) -> "cv2.VideoCapture":
    # CAP_FFMPEG only: the default would open a single image as an image sequence
    params = [cv2.CAP_PROP_N_THREADS, threads] if threads else []
    return cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)


def _probe_opencv(path: str) -> Optional[VideoInfo]:
    cap = _open_capture(path)
    try:
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if not cap.isOpened() or width <= 0 or height <= 0:
            return None
        exact = osp.splitext(path)[1].lower() in _COUNTED_CONTAINERS
        frames = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        return VideoInfo(frames, float(cap.get(cv2.CAP_PROP_FPS)), width, height, "opencv", exact)
    finally:
        cap.release()


def _probe_pyav(path: str) -> VideoInfo:
    av = _pyav()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: not a video: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            if stream.frames:
                frames, exact = int(stream.frames), True
            else:
                duration = container.duration / av.time_base if container.duration else 0.0
                frames, exact = int(round(duration * fps)), False
            ctx = stream.codec_context
            return VideoInfo(frames, fps, ctx.width, ctx.height, "pyav", exact)
    except av.error.FFmpegError as error:
        raise VideoError(f"{path}: not a video or unreadable: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    return (getattr(error, "strerror", None) or str(error)).strip().splitlines()[-1]


def probe_video(path: str, backend: Optional[str] = None) -> VideoInfo:
    """Frame count (see ``VideoInfo``: approximate in Matroska/WebM), frame rate and size of
    ``path``, and the backend that decodes it: OpenCV, else PyAV when OpenCV's build cannot
    open it (or ``backend`` to force one). Raises ``VideoError`` (one line) for a file that is
    missing, empty or not a video."""
    _check_file(path)
    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in (None, "opencv"):
        info = _probe_opencv(path)
        if info is not None:
            return info
        if backend == "opencv" or not have_pyav():
            hint = "" if have_pyav() else " (installing PyAV, pip install av, may help)"
            raise VideoError(f"{path}: not a video, or OpenCV cannot decode it{hint}")
    if not have_pyav():
        raise VideoError(f"{path}: the pyav backend needs PyAV (pip install av)")
    return _probe_pyav(path)


def exact_frame_count(path: str, info: Optional[VideoInfo] = None) -> VideoInfo:
    """``info`` (``probe_video``'s by default) with ``frames_exact``: a count the container
    stores as is, otherwise the packets of the video stream counted (PyAV: demuxed, not
    decoded; about 1 ms per 100 frames) or, without PyAV, the frames decoded. A count short
    of the container's estimate (more than ``_ended_early``'s slack) keeps the estimate: the
    file is cut short, and ``read_frames`` then names the first frame missing. Raises
    ``VideoError`` as ``probe_video``."""
    info = info or probe_video(path)
    if info.frames_exact:
        return info
    frames = None
    av = _pyav()
    if av is not None:
        with contextlib.suppress(av.error.FFmpegError):  # a damaged container: decode
            with av.open(path) as container:
                stream = container.streams.video[0]
                frames = sum(1 for packet in container.demux(stream) if packet.size)
    if frames is None:
        cap = _open_capture(path)
        try:
            frames = 0
            while cap.grab():
                frames += 1
        finally:
            cap.release()
    if frames < info.frames - (1 + info.frames // 100):
        frames = info.frames
    return replace(info, frames=frames, frames_exact=True)


def _ended_early(path: str, index: int, info: VideoInfo, why: str = "") -> Optional[VideoError]:
    """The error for a stream that stopped before frame ``index``, or None for a clean end:
    an exact count must be reached; an estimated one to within 1% + 1 frame."""
    slack = 0 if info.frames_exact else 1 + info.frames // 100
    if not why and index >= info.frames - slack:
        return None
    detail = why or f"the stream ends after {index} of {info.frames} frames: truncated or corrupt"
    return VideoError(f"{path}: frame {index} cannot be decoded ({detail})")


def read_frames(
    path: str,
    start: int = 0,
    stop: Optional[int] = None,
    *,
    info: Optional[VideoInfo] = None,
    threads: int = 0,
) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(index, frame)`` for frames ``start <= index < stop`` (all to the end when
    ``stop`` is None) as BGR ``uint8`` (H, W, 3), decoding one at a time. Frames before
    ``start`` are decoded and dropped (exact indices whatever the container). ``info`` (from
    ``probe_video``) picks the backend; ``threads`` the decoder threads (0: library default).

    A truncated or corrupt file yields its good frames, then raises ``VideoError`` naming the
    path and the first frame that cannot be decoded: a decode error (PyAV), or a stream that
    ends short of the container's frame count (see ``VideoInfo.frames_exact``)."""
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    info = info or probe_video(path)
    reader = _read_opencv if info.backend == "opencv" else _read_pyav
    yield from reader(path, start, stop, info, threads)


def _read_opencv(path, start, stop, info, threads):
    cap = _open_capture(path, threads)
    try:
        if not cap.isOpened():
            raise VideoError(f"{path}: OpenCV cannot open it")
        index = 0
        while stop is None or index < stop:
            ok = cap.grab()  # decodes; retrieve() converts to BGR, skipped before start
            frame = cap.retrieve()[1] if ok and index >= start else None
            if not ok or (index >= start and frame is None):
                error = _ended_early(path, index, info)
                if error is not None:
                    raise error
                return
            if index >= start:
                yield index, frame
            index += 1
    finally:
        cap.release()


def _read_pyav(path, start, stop, info, threads):
    av = _pyav()
    index = 0
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            if threads:
                stream.codec_context.thread_count = threads
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if stop is not None and index >= stop:
                    return
                if index >= start:
                    yield index, frame.to_ndarray(format="bgr24")
                index += 1
    except av.error.FFmpegError as error:
        raise _ended_early(path, index, info, _reason(error)) from None
    if stop is None or index < stop:
        error = _ended_early(path, index, info)
        if error is not None:
            raise error


def label_colours(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """The palette as distinct RGB colours, (N, 3) ``uint8``: a colour already taken by an
    earlier class is nudged (blue +1, then green, red) until free, so colours map back to
    ids. ADE20K's palette repeats one colour (classes 6 and 48 are both (140, 140, 140))."""
    colours = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    if len(colours) == 0 or colours.min() < 0 or colours.max() > 255:
        raise ValueError("palette must be a non-empty list of RGB triples in 0..255")
    if len(colours) > 2**24:
        raise ValueError(f"{len(colours)} classes: more than 2**24 distinct colours")
    taken = set()
    out = np.empty_like(colours)
    for i, colour in enumerate(colours):
        key = _key(colour)
        step = 0
        while key in taken:
            step += 1
            key = (_key(colour) + step) % 2**24  # key is 0xRRGGBB: +1 nudges blue first
        taken.add(key)
        out[i] = (key >> 16, (key >> 8) & 255, key & 255)
    return out.astype(np.uint8)


def _key(rgb) -> int:
    return (int(rgb[0]) << 16) | (int(rgb[1]) << 8) | int(rgb[2])


class _AtomicVideoWriter:
    """Opens its encoder on the first frame (its size fixes the video's), writes to a hidden
    temporary file beside ``path`` and renames it onto ``path`` on ``close``; ``abort`` (and
    leaving the ``with`` block by an exception) deletes it."""

    def __init__(self, path: str, fps: float, backend: Optional[str]):
        if not fps or fps <= 0 or not np.isfinite(fps):
            raise ValueError(f"frame rate must be positive, got {fps}")
        if backend not in (None, *BACKENDS):
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "pyav" and not have_pyav():
            raise VideoError("the pyav backend needs PyAV (pip install av)")
        self.path = path
        self.fps = fps
        self.backend = backend or ("pyav" if have_pyav() else "opencv")
        self.size: Optional[Tuple[int, int]] = None  # (width, height)
        self.frames = 0
        # the extension last: OpenCV picks the container from it
        self._file = AtomicFile(path, suffix=f".tmp{osp.splitext(path)[1]}")
        self._tmp = self._file.tmp
        self._container = self._stream = self._cv_writer = None
        self._closed = False

    # backend hooks
    codec_pyav = ""
    fourcc_opencv = ""

    def _stream_options(self, stream) -> None:
        pass

    def _open(self, width: int, height: int) -> None:
        self.size = (width, height)
        ext = osp.splitext(self.path)[1].lower()
        if self.backend == "pyav":
            av = _pyav()
            muxer = _MUXERS.get(ext)
            if muxer is None:
                raise VideoError(f"{self.path}: cannot write {ext!r} (use one of {list(_MUXERS)})")
            self._container = av.open(self._tmp, "w", format=muxer, options={"fflags": "+bitexact"})
            rate = Fraction(self.fps).limit_denominator(100_000)
            self._stream = self._container.add_stream(self.codec_pyav, rate=rate)
            self._stream.width, self._stream.height = width, height
            self._stream.codec_context.flags |= av.codec.context.Flags.bitexact
            self._stream_options(self._stream)
        else:
            if width % 2 or height % 2:  # OpenCV would silently drop the last row/column
                raise VideoError(
                    f"{self.path}: OpenCV writes even frame sizes only, got {width}x{height} "
                    "(pip install av)"
                )
            fourcc = cv2.VideoWriter_fourcc(*self.fourcc_opencv)
            self._cv_writer = cv2.VideoWriter(
                self._tmp, cv2.CAP_FFMPEG, fourcc, float(self.fps), (width, height)
            )
            if not self._cv_writer.isOpened():
                raise VideoError(
                    f"{self.path}: OpenCV's build cannot write {self.fourcc_opencv!r} {ext} "
                    "video (pip install av)"
                )

    def _write_bgr(self, frame: np.ndarray) -> None:
        height, width = frame.shape[:2]
        if self.size is None:
            self._open(width, height)
        elif (width, height) != self.size:
            raise ValueError(
                f"{self.path}: frame {self.frames} is {width}x{height}, the video "
                f"{self.size[0]}x{self.size[1]}"
            )
        if self._stream is not None:
            # converted here, into a frame PyAV owns: handed the bgr24 frame, the encoder read
            # pixels of arrays already freed (varying bytes from run to run)
            vframe = _pyav().VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
            vframe = vframe.reformat(format=self._stream.pix_fmt)
            vframe.pts = self.frames
            for packet in self._stream.encode(vframe):
                self._container.mux(packet)
        else:
            self._cv_writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> None:
        """Finish the video and move it onto ``path``; with no frames written, abort and
        raise ``VideoError``."""
        if self._closed:
            return
        if self.frames == 0:
            self.abort()
            raise VideoError(f"{self.path}: no frames written")
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
            else:
                self._cv_writer.release()
            self._file.commit()
            self._closed = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the video: close the encoder and delete the temporary file."""
        self._closed = True
        with contextlib.suppress(Exception):
            if self._container is not None:
                self._container.close()
        if self._cv_writer is not None:
            self._cv_writer.release()
        self._file.discard()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):  # never left open: an unclosed writer's file is not the video
        if not getattr(self, "_closed", True):
            self.abort()


class LabelVideoWriter(_AtomicVideoWriter):
    """Class-id maps as a lossless video of palette colours (``label_colours``): FFV1
    (``bgr0``) in ``path`` (``.mkv``; ``.avi`` also works). ``write(label)`` takes (H, W)
    integer ids below ``len(palette)``. The OpenCV backend takes even sizes only."""

    codec_pyav = "ffv1"
    fourcc_opencv = "FFV1"

    def __init__(self, path: str, palette: Sequence[Sequence[int]], fps: float, backend=None):
        self._bgr = label_colours(palette)[:, ::-1].copy()
        super().__init__(path, fps, backend)

    def _stream_options(self, stream) -> None:
        stream.pix_fmt = "bgr0"
        stream.codec_context.thread_count = 1  # FFV1 is fast; one thread keeps one slice layout

    def write(self, label: np.ndarray) -> None:
        label = np.asarray(label)
        if label.ndim != 2 or label.dtype.kind not in "iub":
            raise ValueError(f"label must be (H, W) integers, got {label.dtype} {label.shape}")
        if label.size and (label.min() < 0 or label.max() >= len(self._bgr)):
            raise ValueError(
                f"{self.path}: class ids must be in 0..{len(self._bgr) - 1}, got "
                f"{label.min()}..{label.max()}"
            )
        self._write_bgr(self._bgr[label])


class OverlayVideoWriter(_AtomicVideoWriter):
    """``render_overlay(frame, label, palette, opacity)`` frames as H.264 (CRF 18, yuv420p)
    in ``path`` (``.mp4``) with PyAV, else MPEG-4 part 2 (``mp4v``) through OpenCV. Both need
    even sizes: an odd last row or column is repeated (the video is then one pixel larger)."""

    codec_pyav = "libx264"
    fourcc_opencv = "mp4v"

    def __init__(self, path, palette, fps: float, opacity: float = 0.5, backend=None):
        self.palette = palette
        self.opacity = opacity
        super().__init__(path, fps, backend)

    def _stream_options(self, stream) -> None:
        stream.pix_fmt = "yuv420p"
        stream.options = dict(_X264_OPTIONS)

    def write(self, frame_bgr: np.ndarray, label: np.ndarray) -> None:
        overlay = render_overlay(frame_bgr, label, self.palette, self.opacity)
        height, width = overlay.shape[:2]
        if height % 2 or width % 2:
            overlay = cv2.copyMakeBorder(overlay, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
        self._write_bgr(overlay)


def read_label_video(
    path: str, palette: Sequence[Sequence[int]], start: int = 0
) -> Iterator[np.ndarray]:
    """Class ids (H, W) from a ``LabelVideoWriter`` video with the same ``palette``:
    ``uint8`` up to 256 classes, else ``int32``. A colour outside the palette raises
    ``VideoError`` (a lossy video, or another palette)."""
    colours = label_colours(palette).astype(np.int64)
    keys = (colours[:, 2] << 16) | (colours[:, 1] << 8) | colours[:, 0]  # as BGR bytes read
    order = np.argsort(keys)
    sorted_keys = keys[order]
    dtype = np.uint8 if len(colours) <= 256 else np.int32
    for index, frame in read_frames(path, start):
        pixels = frame.astype(np.int64)
        frame_keys = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
        pos = np.minimum(np.searchsorted(sorted_keys, frame_keys), len(keys) - 1)
        bad = sorted_keys[pos] != frame_keys
        if bad.any():
            y, x = np.argwhere(bad)[0]
            b, g, r = frame[y, x]
            raise VideoError(
                f"{path}: frame {index} pixel ({y}, {x}) has colour RGB ({r}, {g}, {b}), "
                "not in the palette (a lossy video, or another palette)"
            )
        yield order[pos].astype(dtype)
