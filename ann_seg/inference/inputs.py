"""What to segment: an image, a folder (optionally recursive) or a list file, as tasks with
output names mirroring the input tree.

Naming rule (since 0.2): an image's output stem is a function of its own ``name`` alone, so two
inputs never share an output, whatever else is in the folder:

* ``name`` is the path relative to the input root (the folder, the image's folder, or the list
  file's folder), POSIX separators, extension kept; a list entry outside the list file's folder
  is named by its absolute path;
* the output stem is the name itself (``a.png`` -> ``labels/a.png.png``, ``a.jpg`` ->
  ``labels/a.jpg.png``); an absolute name goes under ``_abs/`` without its leading ``/``
  (``/data/x.png`` -> ``labels/_abs/data/x.png.png``); a relative name whose first folder is
  ``_abs``, ``__abs``, ... gets one more leading ``_`` so it never meets an absolute one.

Videos (``ann_seg.io.video.VIDEO_EXTENSIONS``) are read frame by frame: a video named ``name``
becomes one task per frame, named ``<name>#<frame:06d>``, whose output stem is
``<output_stem(name)>.frames/<frame:06d>``; the video's own outputs (``folder``) use
``output_stem(name)`` with the video output's extension (``clip.mp4`` ->
``labels/clip.mp4.mkv``). A video that cannot be probed is one task, failed upfront.

0.1 dropped the extension (``a.png`` -> ``labels/a.png``) unless another input had the same stem
(then ``a_png``), and named list outputs relative to the entries' common folder when one lay
outside the list file's folder: names depended on the other inputs.
"""

import glob
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ann_seg.io import IMAGE_EXTENSIONS
from ann_seg.io.video import VIDEO_EXTENSIONS, VideoError, VideoInfo, exact_frame_count

LIST_EXTENSIONS = (".list", ".lst", ".txt")
LABEL_DIR, OVERLAY_DIR, LOGITS_DIR = "labels", "overlays", "logits"
OUTPUT_DIRS = (LABEL_DIR, OVERLAY_DIR, LOGITS_DIR)
ABSOLUTE_PREFIX = "_abs"
_ESCAPED_PREFIX = re.compile(r"_+abs")
DEFAULT_EXTENSIONS = tuple(sorted(set(IMAGE_EXTENSIONS) | set(VIDEO_EXTENSIONS)))
FRAMES_SUFFIX = ".frames"  # labels/<video stem>.frames/<frame:06d>.png


class InferenceInputError(ValueError):
    """INPUT cannot be used at all (missing, no images in it, bad option values)."""


@dataclass
class ImageTask:
    """One input image: ``path`` is read, ``name`` identifies it (see the module docstring),
    ``out_stem`` is the relative output path without the output extension. ``error``: a reason
    to fail it without reading it. A video's frame: ``video`` (the video's name), ``frame``
    (its index) and ``source`` (the video's ``VideoInfo``, its frame count exact); ``path`` is
    the video's. A video that cannot be read: ``video`` set, ``frame`` None, ``error`` why."""

    path: str
    name: str
    out_stem: str = ""
    outputs: Dict[str, str] = field(default_factory=dict)
    error: Optional[str] = None
    video: Optional[str] = None
    frame: Optional[int] = None
    source: Optional[VideoInfo] = None


def frame_name(video: str, frame: int) -> str:
    """The task name of frame ``frame`` of the video named ``video``."""
    return f"{video}#{frame:06d}"


def is_video(path: str) -> bool:
    return osp.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def video_tasks(path: str, name: str) -> List[ImageTask]:
    """One task per frame of the video at ``path`` named ``name`` (its frame count from the
    container, or counted: ``exact_frame_count``), or one failed task when it cannot be
    probed (``VideoError``'s one line)."""
    stem = output_stem(name)
    try:
        info = exact_frame_count(path)
    except VideoError as error:
        return [ImageTask(path, name, stem, error=str(error), video=name)]
    if info.frames == 0:
        return [ImageTask(path, name, stem, error=f"{path}: no frames", video=name)]
    tasks = [
        ImageTask(path, frame_name(name, i), f"{stem}{FRAMES_SUFFIX}/{i:06d}")
        for i in range(info.frames)
    ]
    for index, task in enumerate(tasks):
        task.video, task.frame, task.source = name, index, info
    return tasks


def output_stem(name: str) -> str:
    """The output stem of an image named ``name`` (injective; see the module docstring)."""
    if name.startswith("/"):
        return f"{ABSOLUTE_PREFIX}/{name.lstrip('/')}"
    first, sep, rest = name.partition("/")
    if _ESCAPED_PREFIX.fullmatch(first):
        return f"_{first}{sep}{rest}"
    return name


def normalize_extensions(extensions: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """``['jpg', '.PNG']`` -> ``('.jpg', '.png')``; ``None`` -> ``DEFAULT_EXTENSIONS`` (images
    and videos)."""
    if not extensions:
        return DEFAULT_EXTENSIONS
    return tuple(sorted({"." + e.lower().lstrip(".") for e in extensions if e.strip(".")}))


def _is_within(path: str, directory: str) -> bool:
    path, directory = osp.realpath(path), osp.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _excluded_dirs(root: str, out_dir: Optional[str], exclude: Sequence[str]) -> List[str]:
    """Folders never scanned: ``exclude``; the output folder when it lies inside ``root``, its
    output sub-folders when it is ``root`` or holds it."""
    dirs = list(exclude)
    if out_dir is not None:
        if _is_within(root, out_dir):
            dirs += [osp.join(out_dir, d) for d in OUTPUT_DIRS]
        else:
            dirs.append(out_dir)
    return dirs


def _scan_folder(
    root: str, recursive: bool, extensions: Tuple[str, ...], exclude: Sequence[str]
) -> List[str]:
    if any(_is_within(root, e) for e in exclude):
        raise InferenceInputError(f"input folder {root} lies in an output folder: {exclude}")
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(
            d for d in subdirs if not any(_is_within(osp.join(directory, d), e) for e in exclude)
        )
        found += [osp.join(directory, f) for f in files if osp.splitext(f)[1].lower() in extensions]
        if not recursive:
            break
    return sorted(found)


def _list_name(path: str, base: str) -> str:
    """``path`` relative to the list file's folder ``base``, or absolute when outside it."""
    rel = osp.relpath(path, base)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return path.replace(os.sep, "/")
    return rel.replace(os.sep, "/")


def _read_list(list_file: str) -> List[Tuple[str, str]]:
    """``(path, name)`` of the paths listed one per line (blank lines and ``#`` comments
    ignored; relative paths are relative to the list file), duplicates dropped."""
    base = osp.dirname(osp.abspath(list_file))
    with open(list_file, encoding="utf-8") as f:
        entries = [line.strip() for line in f]
    items, seen = [], set()
    for entry in entries:
        if not entry or entry.startswith("#"):
            continue
        path = osp.normpath(osp.join(base, osp.expanduser(entry)))
        if path not in seen:
            seen.add(path)
            items.append((path, _list_name(path, base)))
    return items


def _glob_items(pattern: str) -> List[Tuple[str, str]]:
    """``(path, name)`` of the files ``pattern`` matches, sorted; names relative to the
    pattern's leading folders without wildcards."""
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = "/".join(parts[:fixed]) or ("/" if pattern.startswith("/") else ".")
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if osp.isfile(p))
    if not paths:
        raise InferenceInputError(f"no files match {pattern}")
    return [(p, osp.relpath(p, base).replace(os.sep, "/")) for p in paths]


def _output_of(path: str, out_dir: Optional[str]) -> Optional[str]:
    """The output sub-folder of ``out_dir`` that ``path`` lies in, if any."""
    if out_dir is None:
        return None
    return next((d for d in OUTPUT_DIRS if _is_within(path, osp.join(out_dir, d))), None)


def collect_inputs(
    input_path: str,
    recursive: bool = False,
    extensions: Optional[Sequence[str]] = None,
    exclude: Sequence[str] = (),
    out_dir: Optional[str] = None,
) -> List[ImageTask]:
    """The images named by ``input_path``: an image or video file, a glob pattern (quoted
    ``"photos/*.jpg"``, ``**`` for any depth: the files it matches, named relative to the
    pattern's folder before the first wildcard), a folder (files with one of
    ``extensions``, sub-folders with ``recursive``; folders under ``exclude`` are skipped) or a
    list file (``.txt``/``.lst``/``.list``). Unreadable entries are kept: reading reports them.
    ``out_dir``'s outputs are never inputs: folders skip them (the whole ``out_dir`` when it
    lies inside the input folder), an image or list entry among them is failed upfront.
    Names and output stems follow the module docstring's rule; a video is expanded into its
    frames (``video_tasks``)."""
    if not osp.lexists(input_path) and not glob.has_magic(input_path):
        raise InferenceInputError(f"input not found: {input_path}")
    extensions = normalize_extensions(extensions)
    if not osp.lexists(input_path):
        items = [(p, n) for p, n in _glob_items(input_path) if _output_of(p, out_dir) is None]
        if not items:
            raise InferenceInputError(f"all files matching {input_path} are outputs of {out_dir}")
    elif osp.isdir(input_path):
        excluded = _excluded_dirs(input_path, out_dir, exclude)
        paths = _scan_folder(input_path, recursive, extensions, excluded)
        if not paths:
            where = "in or under" if recursive else "in"
            raise InferenceInputError(
                f"no images or videos with extensions {' '.join(extensions)} {where} {input_path}"
                + ("" if recursive else " (use --recursive for sub-folders)")
            )
        items = [(p, osp.relpath(p, input_path).replace(os.sep, "/")) for p in paths]
    elif osp.splitext(input_path)[1].lower() in LIST_EXTENSIONS:
        try:
            items = _read_list(input_path)
        except (OSError, UnicodeDecodeError) as error:
            raise InferenceInputError(f"cannot read list file {input_path}: {error}") from None
        if not items:
            raise InferenceInputError(f"list file {input_path} names no images")
        missing = [p for p, _ in items if not osp.exists(p)]
        if len(missing) == len(items):
            raise InferenceInputError(
                f"none of the {len(items)} paths of list file {input_path} exists: "
                + ", ".join(missing[:3])
                + (", ..." if len(missing) > 3 else "")
            )
    else:
        items = [(input_path, osp.basename(input_path))]
    tasks = []
    for path, name in items:
        inside = _output_of(path, out_dir)
        if inside is not None:
            reason = f"lies in the output folder's {inside}/: an output, not read"
            video = name if is_video(path) else None
            tasks.append(ImageTask(path, name, output_stem(name), error=reason, video=video))
        elif is_video(path):
            tasks += video_tasks(path, name)
        else:
            tasks.append(ImageTask(path, name, output_stem(name)))
    return tasks
