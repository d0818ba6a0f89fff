"""Block-level efficiency comparison after the ANN paper (``ann-seg benchmark-blocks``): every
row on the same input, timed interleaved with an identity baseline, peak memory of one extra
step, both also minus the identity's (``net``), and ``ref / row`` ratios of the net values
against the non-local references (> 1 = better). Rows whose estimated peak memory exceeds a
budget are skipped (``estimate_peak_bytes``). The method and the paper's: docs/benchmarks.md.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import NonLocal2d
from mmseg.models.decode_heads.ann_head import APNB as MMSegAPNB
from torch.profiler import profile

from ann_seg.io import markdown_table
from ann_seg.layers import (
    AFNB,
    APNB,
    AsymmetricAttention,
    CGNLBlock,
    NonLocalBlock,
    PyramidPoolingSampler,
)

from .measure import (
    MIB,
    TimingCase,
    format_error,
    latency_stats,
    measure_peak_memory,
    time_and_measure,
)
from .report import environment, write_json

DEFAULT_SHAPE = (128, 256)
REFERENCES = ("nl_explicit", "nl_sdpa")
PAPER = dict(speedup=6.0, memory_saving=28.0, shape=(128, 256), device="GPU")
PAPER_PAIRS = dict(  # label: (block, reference); the paper measured the attention units
    attention_units=("apnb_attention", "nl_attention"),
    full_blocks=("apnb", "nl_explicit"),
    full_blocks_sdpa=("apnb", "nl_sdpa"),
)


@dataclass
class BlockDims:
    """Channels of the comparison: input C, key/value C', AFNB's low-level input."""

    in_channels: int = 2048
    key_channels: int = 256
    low_channels: int = 1024


@dataclass
class BlockSpec:
    """A row: ``build(dims)`` gives the module; ``pair`` blocks take ``(x_low, x_high)``;
    ``nxn_matrices``: float32 N x N matrices alive at once (memory estimate; ``None``: SDPA,
    decided at run time)."""

    name: str
    description: str
    build: Callable[[BlockDims], nn.Module]
    pair: bool = False
    nxn_matrices: Optional[int] = 0


def _attention_unit(pyramid: bool, backend: str) -> Callable[[BlockDims], nn.Module]:
    """The authors' measured unit (efficiency_statics/block/{apnb,base_oc_block}.py)."""

    def build(d: BlockDims) -> nn.Module:
        sampler = PyramidPoolingSampler((1, 3, 6, 8)) if pyramid else None
        return AsymmetricAttention(
            d.in_channels,
            d.in_channels,
            d.key_channels,
            d.key_channels,
            d.in_channels,
            sampler=sampler,
            share="query_key",
            norm_layer=nn.BatchNorm2d,
            act_layer=nn.ReLU,
            backend=backend,
        )

    return build


def _mmseg_apnb(d: BlockDims) -> nn.Module:
    return MMSegAPNB(
        d.in_channels,
        d.key_channels,
        d.in_channels,
        query_scales=(1,),
        key_pool_scales=(1, 3, 6, 8),
        conv_cfg=None,
        norm_cfg=dict(type="BN"),
        act_cfg=dict(type="ReLU"),
    )


BLOCKS: List[BlockSpec] = [
    BlockSpec(
        "identity", "nn.Identity: the baseline subtracted from every row", lambda d: nn.Identity()
    ),
    BlockSpec(
        "nl_explicit",
        "NonLocalBlock, embedded Gaussian, backend='explicit' (N x N matrix)",
        lambda d: NonLocalBlock(d.in_channels, d.key_channels, backend="explicit"),
        nxn_matrices=2,
    ),
    BlockSpec(
        "nl_sdpa",
        "NonLocalBlock, embedded Gaussian, backend='sdpa'",
        lambda d: NonLocalBlock(d.in_channels, d.key_channels, backend="sdpa"),
        nxn_matrices=None,
    ),
    BlockSpec(
        "cgnl",
        "CGNLBlock, Gaussian kernel, order 3, 8 groups",
        lambda d: CGNLBlock(d.in_channels, d.key_channels, groups=8),
    ),
    BlockSpec(
        "apnb",
        "APNB: pyramid attention + concat fusion (1x1 conv 2C -> C, BN, ReLU)",
        lambda d: APNB(d.in_channels, d.in_channels, d.key_channels),
    ),
    BlockSpec(
        "afnb",
        "AFNB: queries from the high-level map, anchors from a low-level map",
        lambda d: AFNB(d.low_channels, d.in_channels, d.in_channels, d.key_channels),
        pair=True,
    ),
    BlockSpec(
        "nl_attention",
        "authors' NL unit (BaseOC): shared q/k, all N anchors, explicit",
        _attention_unit(False, "explicit"),
        nxn_matrices=2,
    ),
    BlockSpec(
        "apnb_attention",
        "authors' APNB unit: shared q/k, S = 110 pyramid anchors",
        _attention_unit(True, "auto"),
    ),
    BlockSpec(
        "mmcv_nonlocal2d",
        "mmcv.cnn.NonLocal2d, embedded Gaussian (N x N matrix)",
        lambda d: NonLocal2d(d.in_channels, reduction=d.in_channels // d.key_channels),
        nxn_matrices=2,
    ),
    BlockSpec(
        "mmseg_apnb", "mmseg.models.decode_heads.ann_head.APNB (with its fusion conv)", _mmseg_apnb
    ),
]
BLOCK_NAMES = tuple(spec.name for spec in BLOCKS)


def block_inputs(
    spec: BlockSpec,
    dims: BlockDims,
    shape: Tuple[int, int],
    batch_size: int,
    device: str,
    shared: Optional[Dict[str, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, ...]:
    """Random ``(x,)`` or ``(x_low, x_high)`` for ``spec``; ``shared`` caches them so that
    every row sees the same tensors (and they exist once)."""
    shared = {} if shared is None else shared
    names = ("x_low", "x") if spec.pair else ("x",)
    for name in names:
        if name not in shared:
            channels = dims.low_channels if name == "x_low" else dims.in_channels
            shared[name] = torch.randn(batch_size, channels, *shape, device=device)
    return tuple(shared[name] for name in names)


def _eval_step(module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            module(*inputs)

    return step


DIRECT_ESTIMATE_POSITIONS = 4096
_SDPA_MATH = "aten::_scaled_dot_product_attention_math"


def _uses_math_sdpa(step: Callable[[], None]) -> bool:
    """Whether ``step`` runs PyTorch's math SDPA fallback (it materialises the N x S
    logits and weights) rather than a fused kernel."""
    with profile() as prof:
        step()
    return any(event.name == _SDPA_MATH for event in prof.events())


def estimate_peak_bytes(
    spec: BlockSpec,
    module: nn.Module,
    dims: BlockDims,
    shape: Tuple[int, int],
    batch_size: int,
    device: str,
) -> int:
    """Peak memory of one step at ``shape``, without running it there.

    Up to ``DIRECT_ESTIMATE_POSITIONS`` positions the step is measured. Beyond, a probe at 1/4
    of each side (``N/16`` positions) is measured; its peak minus its ``N x N`` matrices
    (``spec.nxn_matrices`` float32 matrices; for SDPA rows 2 if the math fallback runs, else
    0) scales linearly with ``N``, the matrices quadratically.
    """
    n = shape[0] * shape[1]
    probe = (
        shape if n <= DIRECT_ESTIMATE_POSITIONS else (max(1, shape[0] // 4), max(1, shape[1] // 4))
    )
    inputs = block_inputs(spec, dims, probe, batch_size, device)
    step = _eval_step(module, inputs)
    peak = measure_peak_memory(step, device)
    if probe == shape:
        return peak
    matrices = spec.nxn_matrices
    if matrices is None:
        matrices = 2 if _uses_math_sdpa(step) else 0
    n_probe = probe[0] * probe[1]
    matrix_bytes = matrices * batch_size * 4  # per N^2
    linear = max(0, peak - matrix_bytes * n_probe**2)
    return int(linear * n / n_probe + matrix_bytes * n**2)


@dataclass
class _Row:
    spec: BlockSpec
    module: Optional[nn.Module] = None
    case: Optional[TimingCase] = None
    status: str = "ok"
    error: Optional[str] = None
    estimate: Optional[int] = None


def benchmark_blocks(
    shape: Tuple[int, int] = DEFAULT_SHAPE,
    dims: Optional[BlockDims] = None,
    rows: Optional[Sequence[str]] = None,
    batch_size: int = 1,
    repeat: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    max_memory_gb: Optional[float] = 4.0,
    progress: bool = True,
) -> Dict[str, Any]:
    """Run the block comparison; returns ``dict(settings=..., rows=[...], paper_comparison=...)``.

    ``rows``: names from ``BLOCK_NAMES`` (default all; ``identity`` is always added).
    ``max_memory_gb``: skip rows whose estimated peak exceeds it (``None``: no limit).
    """
    dims = dims or BlockDims()
    names = list(BLOCK_NAMES if rows is None else rows)
    unknown = sorted(set(names) - set(BLOCK_NAMES))
    if unknown:
        raise ValueError(f"unknown block rows {unknown}; choose from {BLOCK_NAMES}")
    if "identity" not in names:
        names.insert(0, "identity")
    specs = [spec for spec in BLOCKS if spec.name in names]
    budget = None if max_memory_gb is None else max_memory_gb * (1 << 30)

    entries, shared_inputs = [], {}
    for spec in specs:
        entry = _Row(spec)
        entries.append(entry)
        try:
            entry.module = spec.build(dims).to(device).eval()
            entry.estimate = estimate_peak_bytes(
                spec, entry.module, dims, shape, batch_size, device
            )
        except Exception as error:
            entry.status, entry.error = "error", format_error(error)
            continue
        if budget is not None and entry.estimate > budget:
            entry.status = "skipped"
            entry.error = (
                f"estimated peak {entry.estimate / (1 << 30):.2f} GiB > "
                f"--max-memory-gb {max_memory_gb:g}"
            )
            continue
        inputs = block_inputs(spec, dims, shape, batch_size, device, shared_inputs)
        entry.case = TimingCase(spec.name, _eval_step(entry.module, inputs))

    cases = [e.case for e in entries if e.case is not None]
    what = f"block(s) at {shape[0]}x{shape[1]}"
    time_and_measure(cases, repeat, warmup, device, progress, what)
    for entry in entries:
        if entry.case is not None and not entry.case.ok:
            entry.status, entry.error = "error", format_error(entry.case.error)

    results = [_row_dict(entry) for entry in entries]
    _add_net_and_ratios(results)
    settings = dict(
        shape=list(shape),
        batch_size=batch_size,
        repeat=repeat,
        warmup=warmup,
        device=device,
        max_memory_gb=max_memory_gb,
        **vars(dims),
    )
    return dict(settings=settings, rows=results, paper_comparison=_paper_comparison(results))


def _row_dict(entry: _Row) -> Dict[str, Any]:
    row: Dict[str, Any] = dict(
        name=entry.spec.name,
        description=entry.spec.description,
        status=entry.status,
        estimate_mib=None if entry.estimate is None else entry.estimate / MIB,
    )
    if entry.module is not None:
        row["params_m"] = sum(p.numel() for p in entry.module.parameters()) / 1e6
    if entry.status != "ok":
        row["error"] = entry.error
        return row
    row.update(
        time_ms=latency_stats(entry.case.times),
        times_ms=[t * 1e3 for t in entry.case.times],
        peak_mib=entry.case.peak_bytes / MIB,
    )
    return row


def _add_net_and_ratios(rows: List[Dict[str, Any]]) -> None:
    by_name = {r["name"]: r for r in rows if r["status"] == "ok"}
    base = by_name.get("identity")
    for row in by_name.values():
        row["net_time_ms"] = row["time_ms"]["mean"] - (base["time_ms"]["mean"] if base else 0)
        row["net_peak_mib"] = row["peak_mib"] - (base["peak_mib"] if base else 0)
    for row in by_name.values():
        row["speedup_vs"], row["memory_saving_vs"] = {}, {}
        if row["name"] == "identity":
            continue
        for ref_name in REFERENCES:
            ref = by_name.get(ref_name)
            if ref is not None:
                row["speedup_vs"][ref_name] = _ratio(ref["net_time_ms"], row["net_time_ms"])
                row["memory_saving_vs"][ref_name] = _ratio(ref["net_peak_mib"], row["net_peak_mib"])


def _ratio(numerator: float, denominator: float) -> Optional[float]:
    return numerator / denominator if denominator > 0 else None


def _paper_comparison(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """APNB vs NL as the authors measured (attention units), next to the paper's figures."""
    by_name = {r["name"]: r for r in rows if r["status"] == "ok"}
    result: Dict[str, Any] = dict(paper=PAPER)
    for label, (ours, ref) in PAPER_PAIRS.items():
        if ours in by_name and ref in by_name:
            a, b = by_name[ours], by_name[ref]
            result[label] = dict(
                block=ours,
                reference=ref,
                speedup=_ratio(b["net_time_ms"], a["net_time_ms"]),
                memory_saving=_ratio(b["net_peak_mib"], a["net_peak_mib"]),
            )
    return result


def block_table(result: Dict[str, Any]) -> str:
    """Markdown table of ``benchmark_blocks`` rows."""

    def fmt(value, spec="{:.1f}"):
        return "–" if value is None else spec.format(value)

    header = ["block", "time ms (mean)", "median", "net ms", "peak MiB", "net MiB", "est. MiB"]
    header += ["params M", "speed-up vs NL", "mem. saving vs NL"]
    header += ["speed-up vs NL-SDPA", "mem. saving vs NL-SDPA"]
    body = []
    for row in result["rows"]:
        sizes = [fmt(row.get("estimate_mib"), "{:.0f}"), fmt(row.get("params_m"), "{:.2f}")]
        if row["status"] != "ok":
            status = f"**{row['status']}**: {row['error']}"
            body.append([row["name"], status, "", "", "", "", *sizes, "", "", "", ""])
            continue
        times = (row["time_ms"]["mean"], row["time_ms"]["median"], row["net_time_ms"])
        ratios = [
            fmt(row[kind].get(reference), "{:.2f}")
            for reference in REFERENCES
            for kind in ("speedup_vs", "memory_saving_vs")
        ]
        peaks = (row["peak_mib"], row["net_peak_mib"])
        body.append([row["name"], *map(fmt, times), *map(fmt, peaks), *sizes, *ratios])
    return markdown_table(header, body)


def ratio_words(ratio: Optional[float], better: str, worse: str, what: str) -> str:
    """``2.40`` -> ``'2.40x faster'``; ``0.41`` -> ``'2.44x slower'`` (never a ratio < 1)."""
    if ratio is None:  # the row's net value is not positive
        return f"{what} ratio not measurable"
    if ratio >= 1:
        return f"{ratio:.2f}x {better}"
    return f"{1 / ratio:.2f}x {worse}"


def paper_lines(result: Dict[str, Any], shape: Optional[Tuple[int, int]] = None) -> List[str]:
    """Plain-text summary of ``paper_comparison``: each pair as "Nx faster/slower, Nx less/more
    memory". The paper's figures are quoted only beside the pair it measured (the attention
    units) and only at its input size, with its device (a GPU)."""
    comparison, lines = result["paper_comparison"], []
    paper = comparison["paper"]
    for label in PAPER_PAIRS:
        item = comparison.get(label)
        if item is None:
            continue
        speed = ratio_words(item["speedup"], "faster", "slower", "time")
        memory = ratio_words(item["memory_saving"], "less memory", "more memory", "memory")
        line = f"{item['block']} vs {item['reference']}: {speed}, {memory}"
        if label == "attention_units":
            if shape is None or tuple(shape) == tuple(paper["shape"]):
                line += (
                    f" (paper, same pair at {paper['shape'][0]}x{paper['shape'][1]} on a "
                    f"{paper['device']}: "
                    f"{paper['speedup']:g}x faster, {paper['memory_saving']:g}x less memory)"
                )
            else:
                line += (
                    f" (the paper measured this pair at {paper['shape'][0]}x{paper['shape'][1]} "
                    f"only, on a {paper['device']})"
                )
        else:
            line += " (full blocks with their fusion conv: not in the paper)"
        lines.append(line)
    return lines


def run_block_benchmark(json_path: Optional[str] = None, **options) -> int:
    """``ann-seg benchmark-blocks``: ``benchmark_blocks(**options)``, print the table and the
    paper comparison, write JSON. Returns 1 if a row failed (skipped rows are not failures)."""
    meta = environment(options.get("device", "cpu"))  # load average before our own load
    result = benchmark_blocks(**options)
    settings = result["settings"]
    batch, (height, width) = settings["batch_size"], settings["shape"]
    print(
        f"input [{batch}, {settings['in_channels']}, {height}, {width}] (AFNB low: "
        f"{settings['low_channels']} ch), key/value {settings['key_channels']} ch, eval + "
        f"no_grad, {settings['device']}, {meta['threads']} thread(s), load "
        f"{meta['load_average'][0]:.1f}; {settings['repeat']} interleaved rounds after "
        f"{settings['warmup']} warm-up; net = minus identity; NL = nl_explicit"
    )
    print()
    print(block_table(result))
    print()
    for line in paper_lines(result, (height, width)):
        print(line)
    if json_path:
        write_json(json_path, dict(meta=meta, **result))
    return 1 if any(r["status"] == "error" for r in result["rows"]) else 0
