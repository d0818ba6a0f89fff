"""Peak memory of the banded sliding window (ann_seg.inference.tiles) on images far beyond what
mmseg's slide mode holds, with the R-101 ANN Cityscapes windows (crop 512 x 1024, stride
341 x 683, 19 classes).

Two cases, each in a fresh process; the peak RSS of the slide is ``VmHWM`` reset just before
it (``/proc/self/clear_refs``), so setting up the input does not count:

* ``slide-16k``: a generated 16000 x 16000 RGB image in memory (768 MB), its labels streamed
  into a palette PNG (``PngLabelWriter``). mmseg 1.2.2's ``slide_inference`` would allocate
  ``C*H*W*4 + H*W*4`` bytes of logits and counts for it (20.5 GB).
* ``tiff-40k``: a generated 40000 x 40000 tiled, deflate-compressed BigTIFF (written tile by
  tile; 4.8 GB as raw RGB, beyond OpenCV's pixel limit), read in rows (``open_rows``), labels
  streamed into a tiled label TIFF that keeps its GeoTIFF tags (``TiffLabelWriter``).

The model is a stand-in: ``forward_tiles`` returns random 19-class logits at 1/8 resolution
upsampled 8x (the spatial texture of a d8 network's output); its cost is not what is measured,
the accumulation, argmax, reading and writing are.

  python -m research.large_image --out large_image.json [--workdir DIR]
"""

import argparse
import json
import os
import os.path as osp
import resource
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
import tifffile

from ann_seg.inference.tiles import slide_banded, slide_windows
from ann_seg.io import atomic_write_json, markdown_table
from ann_seg.io.large_images import PngLabelWriter, TiffLabelWriter, open_rows

CROP, STRIDE, CLASSES = (512, 1024), (341, 683), 19
CASES = {"slide-16k": 16000, "tiff-40k": 40000}
GEO_TAGS = [  # a UTM georeference, as GDAL writes it
    (33550, "d", 3, (0.3, 0.3, 0.0), True),
    (33922, "d", 6, (0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0), True),
    (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32611), True),
]


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _reset_peak() -> None:
    """Reset VmHWM (the peak RSS) to the current RSS (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def stand_in_forward(batch_size: int, seed: int = 0):
    """``forward_tiles`` returning random logits: (N, 19, 512, 1024) float32, 8x8 blocks."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(batch_size, CLASSES, CROP[0] // 8, CROP[1] // 8)).astype(np.float32)
    pool = coarse.repeat(8, axis=2).repeat(8, axis=3)

    def forward_tiles(tiles: np.ndarray) -> np.ndarray:
        return pool[: len(tiles)]

    return forward_tiles


def _pattern_rows(y0: int, y1: int, width: int) -> np.ndarray:
    """Generated BGR rows: gradients and stripes."""
    yy = np.arange(y0, y1, dtype=np.uint32)[:, None]
    xx = np.arange(width, dtype=np.uint32)[None, :]
    out = np.empty((y1 - y0, width, 3), np.uint8)
    out[..., 0] = (yy // 7 + xx // 5) % 256
    out[..., 1] = (xx // 13) % 256
    out[..., 2] = ((yy // 64 + xx // 64) % 2) * 200
    return out


def write_big_tiff(path: str, size: int, tile: int = 512) -> None:
    """A ``size`` x ``size`` RGB BigTIFF, deflate tiles, written one tile at a time (16 distinct
    tiles, compressed once: generating 6 100 tiles of content is not the point)."""
    variants = []
    for k in range(16):
        rgb = _pattern_rows(k * 97, k * 97 + tile, tile)[..., ::-1]
        variants.append(zlib.compress(np.ascontiguousarray(rgb).tobytes(), 6))
    across = -(-size // tile)
    count = across * across
    tifffile.imwrite(
        path,
        (variants[i % 16] for i in range(count)),
        shape=(size, size, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        bigtiff=True,
        compression="zlib",
        photometric="rgb",
        extratags=GEO_TAGS,
        metadata=None,
    )


def run_case(name: str, workdir: str) -> dict:
    """One case in this process; its figures."""

    size = CASES[name]
    palette = [(i * 13 % 256, i * 71 % 256, i * 157 % 256) for i in range(CLASSES)]
    batch_size = 2
    forward = stand_in_forward(batch_size)
    result = {"case": name, "height": size, "width": size, "classes": CLASSES}
    result["windows"] = len(slide_windows(size, size, CROP, STRIDE))
    result["rss_after_imports"] = _status_bytes("VmRSS")
    if name == "slide-16k":
        source = np.empty((size, size, 3), np.uint8)  # the input, in memory
        for y in range(0, size, 512):
            source[y : y + 512] = _pattern_rows(y, min(y + 512, size), size)
        out = osp.join(workdir, "labels-16k.png")
        writer = PngLabelWriter(out, size, size, palette)
        closer = None
    else:
        tiff = osp.join(workdir, "image-40k.tif")
        start = time.perf_counter()
        write_big_tiff(tiff, size)
        result["tiff_write_s"] = round(time.perf_counter() - start, 1)
        result["tiff_bytes"] = os.path.getsize(tiff)
        source = open_rows(tiff)
        result["source"] = source.source
        out = osp.join(workdir, "labels-40k.tif")
        writer = TiffLabelWriter(out, size, size, palette, extratags=source.geotiff)
        closer = source
    result["peak_before_slide"] = _status_bytes("VmHWM")
    _reset_peak()
    result["rss_before_slide"] = _status_bytes("VmRSS")
    start = time.perf_counter()
    slide_banded(source, forward, CROP, STRIDE, writer.write_rows, batch_size=batch_size)
    writer.close()
    if closer is not None:
        closer.close()
    result["slide_s"] = round(time.perf_counter() - start, 1)
    result["peak_rss_slide"] = _status_bytes("VmHWM")  # since the reset: the slide's peak
    result["peak_rss_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["output_bytes"] = os.path.getsize(out)
    result["band_bytes"] = CLASSES * min(CROP[0], size) * size * 4
    result["mmseg_slide_bytes"] = CLASSES * size * size * 4 + size * size * 4
    return result


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def table(results) -> str:
    rows = []
    for r in results:
        rows.append(
            [
                f"{r['case']} ({r['height']}x{r['width']})",
                str(r["windows"]),
                _gb(r["mmseg_slide_bytes"]),
                _gb(r["band_bytes"]),
                _gb(r["rss_before_slide"]),
                _gb(r["peak_rss_slide"]),
                _gb(r["peak_rss_slide"] - r["rss_before_slide"]),
                f"{r['slide_s']:.0f}",
            ]
        )
    header = [
        "case",
        "windows",
        "mmseg slide logits+counts",
        "one band (C x crop_h x W)",
        "RSS before the slide",
        "peak RSS in the slide",
        "growth",
        "slide+write s",
    ]
    return markdown_table(header, rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--workdir", help="folder for the generated files (default: a temp one)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--run-case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_case:  # child: one case, JSON on the last line
        print(json.dumps(run_case(args.run_case, args.workdir)))
        return 0
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for name in args.cases:
            child = subprocess.run(
                [sys.executable, "-m", "research.large_image", "--run-case", name]
                + ["--workdir", workdir],
                capture_output=True,
                text=True,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
            )
            if child.returncode:
                sys.stderr.write(child.stderr[-3000:])
                return child.returncode
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
            for path in os.listdir(workdir):  # keep the disk use to one case
                os.unlink(osp.join(workdir, path))
    print(table(results))
    if args.out:
        atomic_write_json(args.out, {"crop": CROP, "stride": STRIDE, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
