"""Segment images, folders and path lists with a trained checkpoint (``tools/infer.py``).

Built on mmseg's inference API: the model comes from ``mmseg.apis.init_model`` (weights loaded
through ann_seg's weights-only checkpoint loader) and every batch goes through
``mmseg.apis.inference_model``, so the config's ``test_pipeline`` and ``test_cfg`` apply as in
``tools/test.py`` (``test_cfg.mode='slide'``: sliding-window inference for images larger than
the crop). Around it this module adds what ``MMSegInferencer`` lacks: recursive folders and path
lists with outputs named after (and mirroring) the input tree, robust image decoding with a
per-file failure report, skipping of finished images, and atomic writes.

Output layout under ``out_dir`` (``<rel>`` is the image's path relative to the input root,
without its extension)::

    labels/<rel>.png      class ids as pixel values: palette ('P') PNG, or 16-bit grey PNG
                          when there are more than 256 classes
    overlays/<rel>.jpg    with ``overlay=True``: colour overlay of the label map on the image
    logits/<rel>.npy      with ``save_logits='npy'``: float16 (C, H, W); '.npz': compressed,
                          key ``logits``
    summary.json          per-image class-pixel counts, sizes, timings; failures with reasons

Decoding (``read_image``): 8-bit images are used as they are; grayscale is replicated to 3
channels; an alpha channel is dropped (not composited); 16-bit images are scaled to 8 bits with
``round(v / 257)`` (65535 -> 255); EXIF orientation is applied (as mmcv's loader does). Empty,
unreadable, undecodable (corrupt, truncated, not an image), float-valued and over-large images
raise ``ImageError`` with the reason; ``run_inference`` reports them and goes on.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import os.path as osp
import stat
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

IMAGE_EXTENSIONS = ('.bmp', '.jpeg', '.jpg', '.png', '.tif', '.tiff', '.webp')
LIST_EXTENSIONS = ('.list', '.lst', '.txt')
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_OUT_DIR = 'outputs/infer'
SUMMARY_NAME = 'summary.json'
LABEL_DIR, OVERLAY_DIR, LOGITS_DIR = 'labels', 'overlays', 'logits'
LOGIT_FORMATS = ('npy', 'npz')
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_OPENCV_FORMATS = ('BMP', 'JPEG', 'JPEG2000', 'PNG', 'PPM', 'TIFF', 'WEBP')  # PIL's names


class InferenceInputError(ValueError):
    """INPUT cannot be used at all (missing, no images in it, bad option values)."""


class ModelLoadError(RuntimeError):
    """The config or checkpoint cannot give a working model."""


class ImageError(Exception):
    """One image cannot be used; ``str(error)`` is the reason reported for it."""


# ----------------------------------------------------------------------------- atomic writes
def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` with
    ``os.replace`` (atomic), on error delete it. Readers never see a partial ``path``.
    Temporary names are hidden: ``.<name>.<random>.tmp``."""
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{osp.basename(path)}.', suffix='.tmp')
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + '\n').encode('utf-8'))


# ----------------------------------------------------------------------------- inputs
@dataclass
class ImageTask:
    """One input image: ``path`` is read, ``name`` is its path relative to the input root
    (POSIX separators) and ``out_stem`` the relative output path without extension."""

    path: str
    name: str
    out_stem: str = ''
    outputs: Dict[str, str] = field(default_factory=dict)


def normalize_extensions(extensions: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """``['jpg', '.PNG']`` -> ``('.jpg', '.png')``; ``None`` -> ``IMAGE_EXTENSIONS``."""
    if not extensions:
        return IMAGE_EXTENSIONS
    return tuple(sorted({'.' + e.lower().lstrip('.') for e in extensions if e.strip('.')}))


def _is_within(path: str, directory: str) -> bool:
    path, directory = osp.realpath(path), osp.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _scan_folder(root: str, recursive: bool, extensions: Tuple[str, ...],
                 exclude: Sequence[str]) -> List[str]:
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs
                            if not any(_is_within(osp.join(directory, d), e) for e in exclude))
        found += [osp.join(directory, f) for f in files
                  if osp.splitext(f)[1].lower() in extensions]
        if not recursive:
            break
    return sorted(found)


def _read_list(list_file: str) -> Tuple[List[str], str]:
    """Paths listed one per line (blank lines and ``#`` comments ignored; relative paths are
    relative to the list file) and the root their output names are relative to."""
    base = osp.dirname(osp.abspath(list_file))
    with open(list_file, encoding='utf-8') as f:
        entries = [line.strip() for line in f]
    paths, seen = [], set()
    for entry in entries:
        if not entry or entry.startswith('#'):
            continue
        path = osp.normpath(osp.join(base, osp.expanduser(entry)))
        if path not in seen:
            seen.add(path)
            paths.append(path)
    if paths and not all(_is_within(p, base) for p in paths):
        base = osp.commonpath([osp.dirname(p) for p in paths])
    return paths, base


def collect_inputs(input_path: str, recursive: bool = False,
                   extensions: Optional[Sequence[str]] = None,
                   exclude: Sequence[str] = ()) -> List[ImageTask]:
    """The images named by ``input_path``: an image file, a folder (files with one of
    ``extensions``, sub-folders with ``recursive``; folders under ``exclude`` are skipped) or a
    list file (``.txt``/``.lst``/``.list``). Unreadable entries are kept: reading reports them.
    Output names mirror the input tree; names that would collide (``a.jpg``, ``a.png``) keep
    their extension (``a_jpg``, ``a_png``)."""
    if not osp.lexists(input_path):
        raise InferenceInputError(f'input not found: {input_path}')
    extensions = normalize_extensions(extensions)
    if osp.isdir(input_path):
        root = input_path
        paths = _scan_folder(input_path, recursive, extensions, exclude)
        if not paths:
            where = 'in or under' if recursive else 'in'
            raise InferenceInputError(
                f'no images with extensions {" ".join(extensions)} {where} {input_path}'
                + ('' if recursive else ' (use --recursive for sub-folders)'))
    elif osp.splitext(input_path)[1].lower() in LIST_EXTENSIONS:
        try:
            paths, root = _read_list(input_path)
        except (OSError, UnicodeDecodeError) as error:
            raise InferenceInputError(f'cannot read list file {input_path}: {error}') from None
        if not paths:
            raise InferenceInputError(f'list file {input_path} names no images')
    else:
        paths, root = [input_path], osp.dirname(input_path)
    tasks = [ImageTask(p, osp.relpath(p, root or '.').replace(os.sep, '/')) for p in paths]
    stems: Dict[str, int] = {}
    for task in tasks:
        stem = osp.splitext(task.name)[0]
        stems[stem] = stems.get(stem, 0) + 1
    used = set()
    for task in tasks:
        stem, ext = osp.splitext(task.name)
        out = stem if stems[stem] == 1 else f'{stem}_{ext.lstrip(".").lower()}'
        base, k = out, 2
        while out in used:
            out, k = f'{base}_{k}', k + 1
        used.add(out)
        task.out_stem = out
    return tasks


# ----------------------------------------------------------------------------- decoding
def _probe_header(data: bytes, max_pixels: int) -> Optional[Tuple[str, str, Tuple[int, int]]]:
    """``(format, mode, (width, height))`` from the header (no pixel decoding), or ``None``."""
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with Image.open(io.BytesIO(data)) as image:
                return image.format or '', image.mode, image.size
    except Image.DecompressionBombError as error:
        if max_pixels <= 2 * (Image.MAX_IMAGE_PIXELS or 0):
            raise ImageError(f'too large: {error}') from None
        return None
    except Exception:  # noqa: BLE001 - not recognised by PIL; OpenCV may still decode it
        return None


def read_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[np.ndarray, dict]:
    """Read ``path`` as a BGR ``uint8`` (H, W, 3) image (mmcv's channel order) plus a dict
    describing the source (``format``, ``mode``, ``bit_depth``) and the ``conversions`` made.
    Raises ``ImageError`` with the reason when it cannot be used."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError('file not found') from None
    except OSError as error:
        raise ImageError(f'cannot read file: {error.strerror or error}') from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError('not a regular file')
    if info.st_size == 0:
        raise ImageError('empty file (0 bytes)')
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as error:
        raise ImageError(f'cannot read file: {error.strerror or error}') from None
    header = _probe_header(data, max_pixels)
    too_large = 'too large: {w}x{h} = {mp:.1f} MP exceeds the limit of {lim:g} MP (--max-pixels)'
    if header is not None and header[2][0] * header[2][1] > max_pixels:
        w, h = header[2]
        raise ImageError(too_large.format(w=w, h=h, mp=w * h / 1e6, lim=max_pixels / 1e6))
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8),
                             cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as error:
        raise ImageError(f'cannot decode: {str(error).strip().splitlines()[-1]}') from None
    if image is None:
        if header is None:
            raise ImageError('not an image: no decoder recognises the content')
        if header[0] in _OPENCV_FORMATS:
            raise ImageError(f'corrupt or truncated {header[0]} data')
        raise ImageError(f'unsupported image format {header[0] or "(unknown)"}')
    h, w = image.shape[:2]
    if h * w > max_pixels:
        raise ImageError(too_large.format(w=w, h=h, mp=w * h / 1e6, lim=max_pixels / 1e6))
    conversions = []
    depth = image.dtype.itemsize * 8
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
        conversions.append('16-bit scaled to 8-bit (round(v / 257))')
    elif image.dtype != np.uint8:
        raise ImageError(f'unsupported pixel type {image.dtype} (8- and 16-bit integer images '
                         'are supported)')
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        conversions.append('grayscale replicated to 3 channels')
    elif image.shape[2] == 4:
        image = np.ascontiguousarray(image[..., :3])
    elif image.shape[2] != 3:
        raise ImageError(f'unsupported channel count {image.shape[2]}')
    mode = header[1] if header is not None else f'{depth}-bit'
    if 'A' in mode or 'a' in mode:
        conversions.append('alpha channel dropped (not composited)')
    source = {'format': header[0] if header is not None else osp.splitext(path)[1].lstrip('.'),
              'mode': mode, 'bit_depth': depth}
    return image, dict(source, conversions=conversions)


# ----------------------------------------------------------------------------- model
def _generated_palette(count: int, seed: int = 42) -> List[List[int]]:
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(count, 3)).tolist()


def resolve_dataset_meta(cfg, checkpoint_meta: Optional[dict], num_classes: int) -> dict:
    """Class names and palette (``num_classes`` RGB triples): the checkpoint's
    ``meta.dataset_meta`` (or mmseg 0.x ``CLASSES``/``PALETTE``), else the config's test data
    set (its ``metainfo`` or the data set class's ``METAINFO``), else generated. Missing
    entries are filled in. ``source`` says where they came from."""
    meta, source = {}, 'generated'
    checkpoint_meta = checkpoint_meta or {}
    if isinstance(checkpoint_meta.get('dataset_meta'), dict):
        meta, source = dict(checkpoint_meta['dataset_meta']), 'checkpoint'
    elif 'CLASSES' in checkpoint_meta:
        meta = {'classes': checkpoint_meta['CLASSES'], 'palette': checkpoint_meta.get('PALETTE')}
        source = 'checkpoint'
    else:
        with contextlib.suppress(Exception):
            dataset = cfg.test_dataloader.dataset
            meta = dict(dataset.get('metainfo') or {})
            if 'classes' not in meta:
                from mmseg.registry import DATASETS
                meta = dict(DATASETS.get(dataset.type).METAINFO, **meta)
            source = 'config' if meta.get('classes') else source
    classes = [str(c) for c in (meta.get('classes') or ())][:num_classes]
    classes += [f'class_{i}' for i in range(len(classes), num_classes)]
    palette = [[int(v) for v in c] for c in (meta.get('palette') or ())][:num_classes]
    palette += _generated_palette(num_classes)[len(palette):]
    return {'classes': classes, 'palette': palette, 'source': source}


def build_inference_model(config, device: str = 'cpu', cfg_options: Optional[dict] = None):
    """``(cfg, model)``: the config's segmentor from ``mmseg.apis.init_model`` (no pretrained
    download, PyTorch's default init, eval mode) with a ``test_pipeline`` for
    ``inference_model``. Raises ``ModelLoadError``."""
    from mmseg.apis import init_model

    import ann_seg  # noqa: F401  (registers the heads, installs the safe loader)

    from .runner import load_config

    try:
        cfg = load_config(config, cfg_options)
        if 'test_pipeline' not in cfg:
            cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline
        return cfg, init_model(cfg, None, device=device)
    except Exception as error:
        raise ModelLoadError(f'cannot build the model of {config}: {error}') from error


def load_segmentor(config, checkpoint: str, device: str = 'cpu',
                   cfg_options: Optional[dict] = None):
    """``build_inference_model`` and load ``checkpoint`` (weights-only loader; every key must
    match, except an auxiliary head's, which inference does not use). Sets
    ``model.dataset_meta`` (see ``resolve_dataset_meta``)."""
    from mmengine.runner.checkpoint import CheckpointLoader

    cfg, model = build_inference_model(config, device, cfg_options)
    try:
        ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    except Exception as error:
        raise ModelLoadError(f'cannot load checkpoint {checkpoint}: {error}') from error
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ModelLoadError(f'{checkpoint} holds no state_dict')
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith('auxiliary_head.')]
    if missing or unexpected:
        raise ModelLoadError(
            f'{checkpoint} does not match {config}: {len(missing)} missing keys '
            f'{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}')
    model.dataset_meta = resolve_dataset_meta(cfg, ckpt.get('meta'),
                                              model.decode_head.num_classes)
    model.eval()
    return model


def default_device() -> str:
    import torch
    return 'cuda:0' if torch.cuda.is_available() else 'cpu'


# ----------------------------------------------------------------------------- fast modes
AMP_CHOICES = ('off', 'auto', 'on')


def native_amp_dtype(device: str):
    """The low-precision dtype ``device`` computes natively, else ``None``: float16 on CUDA,
    bfloat16 on CPUs with AVX512-BF16 or AMX (oneDNN's check). Elsewhere bfloat16 is emulated
    in float32 and several times slower than float32 itself."""
    import torch
    if str(device).startswith('cuda'):
        return torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def resolve_amp(amp: Optional[str], device: str):
    """``amp`` ('off'/None, 'auto', 'on') -> the autocast dtype or ``None``. 'auto' uses
    ``native_amp_dtype`` (float32 where the hardware has no fast low precision); 'on' always
    autocasts (bfloat16 on the CPU, float16 on CUDA)."""
    import torch
    amp = amp or 'off'
    if amp not in AMP_CHOICES:
        raise InferenceInputError(f'amp must be one of {AMP_CHOICES}, got {amp!r}')
    if amp == 'off':
        return None
    if amp == 'auto':
        return native_amp_dtype(device)
    return torch.float16 if str(device).startswith('cuda') else torch.bfloat16


def dtype_name(dtype) -> Optional[str]:
    """``torch.bfloat16`` -> ``'bfloat16'``; ``None`` stays ``None`` (for JSON summaries)."""
    return str(dtype).replace('torch.', '') if dtype is not None else None


def autocast_context(device: str, dtype):
    """``torch.autocast`` for ``device`` and ``dtype``; a no-op context for ``dtype=None``."""
    import torch
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(str(device).split(':')[0], dtype=dtype)


def prepare_for_inference(model, fuse: bool = False):
    """``fuse``: fold BatchNorms into convolutions and APNB/AFNB's output projections into
    their fusion (``ann_seg.models.fuse``), channels-last weights; the predictions are the
    float32 ones up to rounding. Returns ``model`` (in eval mode)."""
    model.eval()
    if fuse:
        from ann_seg.models.fuse import fuse_for_inference
        fuse_for_inference(model, channels_last=True)
    return model


# ----------------------------------------------------------------------------- outputs
def encode_label_png(label: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """Class ids as pixel values: a palette PNG for ids < 256, else a 16-bit grey PNG."""
    if int(label.max(initial=0)) < 256 and len(palette) <= 256:
        from PIL import Image
        image = Image.fromarray(label.astype(np.uint8))
        image.putpalette([int(v) for colour in palette for v in colour])
        buffer = io.BytesIO()
        image.save(buffer, format='PNG')
        return buffer.getvalue()
    ok, encoded = cv2.imencode('.png', label.astype(np.uint16))
    if not ok:
        raise RuntimeError('PNG encoding failed')
    return encoded.tobytes()


def read_label_png(path: str) -> np.ndarray:
    """Class ids from a label PNG written by ``encode_label_png``."""
    from PIL import Image
    with Image.open(path) as image:
        if image.mode not in ('P', 'L', 'I;16', 'I'):
            raise ValueError(f'{path}: unexpected label PNG mode {image.mode}')
        return np.array(image)


def render_overlay(image_bgr: np.ndarray, label: np.ndarray,
                   palette: Sequence[Sequence[int]], opacity: float) -> np.ndarray:
    """``(1 - opacity) * image + opacity * palette[label]`` (BGR ``uint8``)."""
    colours = np.asarray(palette, dtype=np.uint8)[:, ::-1]
    colour_map = colours[np.clip(label, 0, len(colours) - 1)]
    return cv2.addWeighted(image_bgr, 1.0 - opacity, colour_map, opacity, 0.0)


def encode_jpeg(image_bgr: np.ndarray, quality: int = 90) -> bytes:
    ok, encoded = cv2.imencode('.jpg', image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError('JPEG encoding failed')
    return encoded.tobytes()


def encode_logits(logits: np.ndarray, fmt: str) -> bytes:
    """float16 ``(C, H, W)`` as ``.npy`` or compressed ``.npz`` (key ``logits``)."""
    half = np.clip(logits, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)
    buffer = io.BytesIO()
    if fmt == 'npz':
        np.savez_compressed(buffer, logits=half)
    else:
        np.save(buffer, half)
    return buffer.getvalue()


def class_pixel_counts(label: np.ndarray, num_classes: int) -> Dict[str, int]:
    """``{class id: pixels}`` for the classes present."""
    counts = np.bincount(label.ravel().astype(np.int64), minlength=num_classes)
    return {str(i): int(n) for i, n in enumerate(counts) if n}


def _plan_outputs(task: ImageTask, out_dir: str, overlay: bool,
                  save_logits: Optional[str]) -> None:
    parts = task.out_stem.split('/')
    task.outputs = {'label': osp.join(out_dir, LABEL_DIR, *parts) + '.png'}
    if overlay:
        task.outputs['overlay'] = osp.join(out_dir, OVERLAY_DIR, *parts) + '.jpg'
    if save_logits:
        task.outputs['logits'] = osp.join(out_dir, LOGITS_DIR, *parts) + f'.{save_logits}'


def _previous_records(out_dir: str) -> Dict[str, dict]:
    """Per-image records of an earlier run's summary (empty if there is none)."""
    try:
        with open(osp.join(out_dir, SUMMARY_NAME), encoding='utf-8') as f:
            return {r['name']: r for r in json.load(f)['images']}
    except Exception:  # noqa: BLE001 - missing or unreadable: nothing to carry over
        return {}


def _finished_record(task: ImageTask, out_dir: str, num_classes: int,
                     previous: Dict[str, dict]) -> Optional[dict]:
    """The record of an image whose outputs all exist (``None`` if any is missing or the
    label map cannot be read). Counts and size come from the label map; the source
    description from the previous summary, when it has one."""
    if not all(osp.isfile(p) for p in task.outputs.values()):
        return None
    try:
        label = read_label_png(task.outputs['label'])
    except Exception:  # noqa: BLE001 - unreadable: segment again
        return None
    record = {'name': task.name, 'input': task.path, 'status': 'skipped',
              'height': int(label.shape[0]), 'width': int(label.shape[1])}
    earlier = previous.get(task.name, {})
    record.update({k: earlier[k] for k in ('source', 'conversions') if k in earlier})
    record.update(class_pixels=class_pixel_counts(label, num_classes),
                  outputs={k: osp.relpath(v, out_dir) for k, v in task.outputs.items()})
    return record


def _write_outputs(task: ImageTask, image: np.ndarray, result, palette, opacity: float,
                   save_logits: Optional[str]) -> np.ndarray:
    """Write logits, overlay, then the label map (last: its presence marks the image done)."""
    label = result.pred_sem_seg.data[0].cpu().numpy()
    if save_logits:
        logits = result.seg_logits.data.float().cpu().numpy()
        atomic_write_bytes(task.outputs['logits'], encode_logits(logits, save_logits))
    if 'overlay' in task.outputs:
        overlay_bgr = render_overlay(image, label, palette, opacity)
        atomic_write_bytes(task.outputs['overlay'], encode_jpeg(overlay_bgr))
    atomic_write_bytes(task.outputs['label'], encode_label_png(label, palette))
    return label


# ----------------------------------------------------------------------------- the run
def _progress_bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from mmengine.utils import ProgressBar
    return ProgressBar(total, file=sys.stderr)


def run_inference(config, checkpoint: str, input_path: str, out_dir: str = DEFAULT_OUT_DIR, *,
                  overlay: bool = False, opacity: float = 0.5, batch_size: int = 1,
                  device: Optional[str] = None, recursive: bool = False,
                  extensions: Optional[Sequence[str]] = None, save_logits: Optional[str] = None,
                  force: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                  cfg_options: Optional[dict] = None, progress: bool = True,
                  fuse: bool = False, amp: Optional[str] = None) -> dict:
    """Segment every image of ``input_path`` (image, folder or list file) into ``out_dir``.

    ``fuse`` and ``amp`` select the fast inference mode (``prepare_for_inference``,
    ``resolve_amp``); the summary records the mode used.

    Images whose outputs all exist are skipped unless ``force``. Images that cannot be read
    or segmented are reported in the summary's ``failures`` (name and reason) and the others
    are processed. Consecutive images of equal size are batched (``batch_size``). Returns the
    summary that is also written to ``out_dir/summary.json``.

    Raises:
        InferenceInputError: ``input_path`` is missing or holds no images, or bad options.
        ModelLoadError: the config or checkpoint cannot be loaded.
    """
    if not 0.0 < opacity <= 1.0:
        raise InferenceInputError(f'opacity must be in (0, 1], got {opacity}')
    if batch_size < 1:
        raise InferenceInputError(f'batch size must be >= 1, got {batch_size}')
    if save_logits not in (None, *LOGIT_FORMATS):
        raise InferenceInputError(f'save_logits must be one of {LOGIT_FORMATS}')
    start = time.perf_counter()
    tasks = collect_inputs(input_path, recursive, extensions, exclude=[out_dir])
    for task in tasks:
        _plan_outputs(task, out_dir, overlay, save_logits)
    device = device or default_device()
    amp_dtype = resolve_amp(amp, device)
    if amp == 'auto' and amp_dtype is None:
        print(f'--amp auto: {device} has no native low precision (bfloat16 would be emulated, '
              'slower than float32); running in float32', file=sys.stderr)
    model = prepare_for_inference(load_segmentor(config, checkpoint, device, cfg_options), fuse)
    load_s = time.perf_counter() - start
    meta = model.dataset_meta
    num_classes = len(meta['classes'])
    palette = meta['palette']
    records: Dict[int, dict] = {}
    failures: Dict[int, dict] = {}
    todo = []
    previous = {} if force else _previous_records(out_dir)
    for index, task in enumerate(tasks):
        record = None if force else _finished_record(task, out_dir, num_classes, previous)
        if record is None:
            todo.append(index)
        else:
            records[index] = record
    bar = _progress_bar(len(tasks), progress)
    if bar is not None and records:
        bar.update(len(records))

    def fail(index: int, reason: str) -> None:
        failures[index] = {'name': tasks[index].name, 'input': tasks[index].path,
                           'reason': reason}

    def run_batch(batch: List[Tuple[int, np.ndarray, dict, float]]) -> None:
        from mmseg.apis import inference_model
        t0 = time.perf_counter()
        try:
            with autocast_context(device, amp_dtype):
                results = inference_model(model, [item[1] for item in batch])
        except Exception as error:  # noqa: BLE001 - report, go on with the other images
            if len(batch) > 1:
                for item in batch:
                    run_batch([item])
                return
            fail(batch[0][0], f'inference failed: {type(error).__name__}: {error}')
            return
        infer_s = (time.perf_counter() - t0) / len(batch)
        for (index, image, info, read_s), result in zip(batch, results):
            task = tasks[index]
            t1 = time.perf_counter()
            try:
                label = _write_outputs(task, image, result, palette, opacity, save_logits)
            except Exception as error:  # noqa: BLE001
                fail(index, f'cannot write outputs: {type(error).__name__}: {error}')
                continue
            records[index] = {
                'name': task.name, 'input': task.path, 'status': 'done',
                'height': int(label.shape[0]), 'width': int(label.shape[1]),
                'source': {k: info[k] for k in ('format', 'mode', 'bit_depth')},
                'conversions': info['conversions'],
                'class_pixels': class_pixel_counts(label, num_classes),
                'outputs': {k: osp.relpath(v, out_dir) for k, v in task.outputs.items()},
                'timings': {'read_s': round(read_s, 4), 'infer_s': round(infer_s, 4),
                            'write_s': round(time.perf_counter() - t1, 4)}}

    def advance(count: int) -> None:
        if bar is not None and count:
            bar.update(count)

    pending: List[Tuple[int, np.ndarray, dict, float]] = []

    def flush() -> None:
        if pending:
            run_batch(list(pending))
            advance(len(pending))
            pending.clear()

    for index in todo:
        t0 = time.perf_counter()
        try:
            image, info = read_image(tasks[index].path, max_pixels)
        except ImageError as error:
            fail(index, str(error))
            advance(1)
            continue
        if pending and pending[0][1].shape != image.shape:
            flush()
        pending.append((index, image, info, time.perf_counter() - t0))
        if len(pending) == batch_size:
            flush()
    flush()
    if bar is not None:
        bar.file.write('\n')

    images = [records[i] for i in range(len(tasks)) if i in records]
    done = [r for r in images if r['status'] == 'done']
    summary = {
        'config': config if isinstance(config, str) else getattr(config, 'filename', None),
        'checkpoint': str(checkpoint), 'input': str(input_path),
        'out_dir': out_dir, 'device': device,
        'inference_mode': {'fuse': bool(fuse), 'autocast': dtype_name(amp_dtype)},
        'test_cfg': dict(model.test_cfg) if model.test_cfg else {'mode': 'whole'},
        'classes': meta['classes'], 'palette': palette, 'palette_source': meta['source'],
        'counts': {'images': len(tasks), 'processed': len(done),
                   'skipped': len(images) - len(done), 'failed': len(failures)},
        'images': images,
        'failures': [failures[i] for i in sorted(failures)],
        'timings': {'load_model_s': round(load_s, 3),
                    'infer_s': round(sum(r['timings']['infer_s'] for r in done), 3),
                    'total_s': round(time.perf_counter() - start, 3)},
    }
    atomic_write_json(osp.join(out_dir, SUMMARY_NAME), summary)
    return summary
