"""ann_seg.layers.compat: the branch taken matches the installed torch, and each helper agrees
with what torch itself reports."""

import subprocess
import sys

import pytest
import torch

from ann_seg.layers import APNB, compat


def test_branches_match_the_installed_torch():
    assert compat.TORCH_VERSION == tuple(int(p) for p in torch.__version__.split(".")[:2])
    if compat.TORCH_VERSION <= (2, 1):
        assert not compat.HAS_CPU_FLOAT16_AUTOCAST
    elif compat.TORCH_VERSION >= (2, 4):
        assert compat.HAS_CPU_FLOAT16_AUTOCAST
    assert compat.HAS_DEVICE_AUTOCAST_API == (compat.TORCH_VERSION >= (2, 4))
    assert compat.HAS_COMPILER_IS_COMPILING == (compat.TORCH_VERSION >= (2, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_state_and_dtype_on_cpu(dtype):
    if dtype == torch.float16 and not compat.HAS_CPU_FLOAT16_AUTOCAST:
        pytest.skip("this torch autocasts only bfloat16 on the CPU")
    x = torch.ones(2, dtype=torch.float32)
    assert not compat.autocast_enabled("cpu") and compat.output_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=dtype):
        assert compat.autocast_enabled("cpu")
        assert compat.autocast_dtype("cpu") == dtype
        assert compat.output_dtype(x) == dtype
        assert not compat.autocast_enabled("cuda")  # the CPU state is not the CUDA state
    assert compat.output_dtype(x.double()) == torch.float64


def test_is_tracing_only_while_tracing():
    seen = []

    def probe(x):
        seen.append(compat.is_tracing())
        return x * 2

    probe(torch.ones(1))
    torch.jit.trace(probe, torch.ones(1), check_trace=False)
    assert seen == [False, True]


def test_blocks_run_under_autocast_with_the_compat_helpers():
    block = APNB(8, 8, key_channels=4).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(torch.randn(1, 8, 9, 7))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_native_low_precision_matches_onednn():
    expected = torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    assert compat.native_low_precision_dtype("cpu") == expected
    assert compat.native_low_precision_dtype("cuda:0") == torch.float16


def test_layers_need_only_pytorch():
    """With mmcv, mmengine, mmseg, OpenCV and PIL made unimportable, ``ann_seg.layers``
    imports, and APNB/AFNB/NL/CGNL run."""
    code = "\n".join(
        [
            "import sys",
            "BLOCKED = ('mmcv', 'mmengine', 'mmseg', 'cv2', 'PIL')",
            "for name in BLOCKED:",
            "    sys.modules[name] = None  # import fails, find_spec says 'not installed'",
            "import torch",
            "from ann_seg.layers import AFNB, APNB, CGNLBlock, NonLocalBlock",
            "x = torch.randn(1, 16, 9, 11)",
            "assert APNB(16, 16, key_channels=8)(x).shape == x.shape",
            "assert AFNB(16, 16, 16, key_channels=8)(x, x).shape == x.shape",
            "assert NonLocalBlock(16)(x).shape == x.shape",
            "assert CGNLBlock(16, groups=4)(x).shape == x.shape",
            "loaded = [n for n in BLOCKED if sys.modules.get(n) is not None]",
            "assert not loaded, loaded",
            "print('ok')",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
