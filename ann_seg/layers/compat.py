"""The few PyTorch APIs that changed between torch 2.1 and 2.13, in one place.

ann_seg supports torch 2.1 (OpenMMLab's prebuilt CUDA mmcv 2.1.0 wheels exist for torch 2.0/2.1
only) up to 2.13. Each helper picks its implementation once, at import time, from what the
installed torch offers (``HAS_*`` flags say which), so compiled graphs see a plain call.
"""

import inspect
import warnings
from typing import Optional

import torch

TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
# torch >= 2.4: torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type)
HAS_DEVICE_AUTOCAST_API = hasattr(torch, "get_autocast_dtype")
# torch >= 2.3: torch.compiler.is_compiling (2.1/2.2: torch._dynamo.is_compiling)
HAS_COMPILER_IS_COMPILING = hasattr(getattr(torch, "compiler", None), "is_compiling")
# torch >= 2.5: torch.serialization.safe_globals/get_safe_globals (an allowlist for
# torch.load(weights_only=True)) and get_unsafe_globals_in_checkpoint
HAS_SAFE_GLOBALS = all(
    hasattr(torch.serialization, name)
    for name in ("safe_globals", "get_safe_globals", "get_unsafe_globals_in_checkpoint")
)


def _cpu_autocast_accepts(dtype: torch.dtype) -> bool:
    # torch 2.1 warns and then raises for CPU float16 autocast (bfloat16 only); later accept it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            with torch.autocast("cpu", dtype=dtype):
                return True
        except RuntimeError:
            return False


# torch >= 2.2 (or so): float16 autocast on the CPU, not only bfloat16
HAS_CPU_FLOAT16_AUTOCAST = _cpu_autocast_accepts(torch.float16)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is active for ``device_type`` (``'cpu'``, ``'cuda'``...)."""
    if HAS_DEVICE_AUTOCAST_API:
        return torch.is_autocast_enabled(device_type)
    if device_type == "cpu":
        return torch.is_autocast_cpu_enabled()
    return torch.is_autocast_enabled()  # torch < 2.4: the CUDA state


def autocast_dtype(device_type: str) -> torch.dtype:
    """The dtype autocast computes in on ``device_type`` (meaningful while it is enabled)."""
    if HAS_DEVICE_AUTOCAST_API:
        return torch.get_autocast_dtype(device_type)
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype()
    return torch.get_autocast_gpu_dtype()


def output_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype an op on ``tensor`` returns: the autocast dtype under autocast, else its own."""
    device_type = tensor.device.type
    return autocast_dtype(device_type) if autocast_enabled(device_type) else tensor.dtype


if HAS_COMPILER_IS_COMPILING:
    _is_compiling = torch.compiler.is_compiling
else:  # torch 2.1/2.2
    _is_compiling = torch._dynamo.is_compiling


def is_tracing() -> bool:
    """True inside ``torch.jit.trace`` (ONNX export) or ``torch.compile``."""
    return torch.jit.is_tracing() or _is_compiling()


def native_low_precision_dtype(device: str) -> Optional[torch.dtype]:
    """The low-precision dtype ``device`` computes natively, else ``None``: float16 on CUDA,
    bfloat16 on CPUs with AVX512-BF16 or AMX (oneDNN's check). Elsewhere bfloat16 is emulated
    in float32 and several times slower than float32 itself."""
    if str(device).startswith("cuda"):
        return torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def event_start_ns(event) -> int:
    """Start of a profiler (kineto) event in ns: ``start_ns()``, or torch 2.1's ``start_us()``."""
    if hasattr(event, "start_ns"):
        return event.start_ns()
    return event.start_us() * 1000


# torch >= 2.5 has two ONNX exporters and takes ``dynamo=``; older ones only the TorchScript one
HAS_ONNX_DYNAMO_FLAG = "dynamo" in inspect.signature(torch.onnx.export).parameters


def torchscript_onnx_export_kwargs() -> dict:
    """``torch.onnx.export`` keywords that select the TorchScript (tracing) exporter."""
    return {"dynamo": False} if HAS_ONNX_DYNAMO_FLAG else {}


# torch 2.1's ONNX symbolic of scaled_dot_product_attention fails on a float ``scale``
# ("z_(): incompatible function arguments"); 2.13's works; versions between are untested, so
# below 2.5 the traced graph uses the explicit softmax(q k^T) v form (same numbers)
SDPA_EXPORTS_TO_ONNX = TORCH_VERSION >= (2, 5)
