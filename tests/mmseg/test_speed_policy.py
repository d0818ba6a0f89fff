"""The speed policy (ann_seg.mmseg.speed): one vocabulary, resolved the same way from every
entry point; the heads in low precision against their float64 selves."""

import importlib

import pytest
import torch
from mmseg.registry import MODELS

from ann_seg.benchmark.inference_modes import mode_speed
from ann_seg.benchmark.models import split_variant
from ann_seg.mmseg import speed
from ann_seg.mmseg.config import ConfigError
from ann_seg.mmseg.speed import SpeedPolicy

NATIVE = {"bf16": torch.bfloat16, "none": None}


@pytest.fixture(params=["bf16", "none"])
def cpu_native(request, monkeypatch):
    """A CPU with native bfloat16 (AVX512-BF16/AMX) and one without."""
    native = NATIVE[request.param]
    monkeypatch.setattr(speed, "native_low_precision_dtype", lambda device: native)
    return native


def parse(tool: str, argv):
    module = importlib.import_module(f"ann_seg.tools.{tool}")
    if tool in ("train", "test"):
        return module.parse_args(argv)
    return module.build_parser().parse_args(argv)


TOOL_ARGV = {
    "infer": ["c.py", "m.pth", "in/"],
    "test": ["c.py", "m.pth"],
    "train": ["c.py"],
}
TASK = {"infer": "infer", "test": "test", "train": "train"}


@pytest.mark.parametrize("tool", ["infer", "test", "train"])
def test_every_entry_point_resolves_fast_the_same_way(tool, cpu_native):
    args = parse(tool, [*TOOL_ARGV[tool], "--fast"])
    resolved = speed.speed_policy(args, TASK[tool]).resolve("cpu")
    expected = "bf16+cl" if cpu_native else "fp32"
    assert resolved.name.startswith(expected)
    assert resolved.name.endswith("+fuse" if tool != "train" else "+fast")
    if cpu_native is None:
        assert "no native low precision" in resolved.note
    # the benchmark's suffix and the inference-mode name mean the same
    mode = "infer" if tool != "train" else "train"
    _, policy, _ = split_variant("c.py+fast", mode)
    assert policy.resolve("cpu").name == resolved.name
    if tool != "train":
        assert mode_speed("fast", "cpu").name == resolved.name


@pytest.mark.parametrize("tool", ["infer", "test", "train"])
def test_explicit_flags_override_fast(tool, cpu_native):
    argv = [*TOOL_ARGV[tool], "--fast", "--precision", "fp32", "--no-channels-last"]
    resolved = speed.speed_policy(parse(tool, argv), TASK[tool]).resolve("cpu")
    assert resolved.dtype is None and not resolved.channels_last
    plain = speed.speed_policy(parse(tool, TOOL_ARGV[tool]), TASK[tool]).resolve("cpu")
    assert plain.name == "fp32" and plain.note is None
    explicit = speed.speed_policy(parse(tool, [*TOOL_ARGV[tool], "--precision", "bf16"]), tool)
    resolved = explicit.resolve("cpu")
    assert resolved.dtype == torch.bfloat16 and resolved.channels_last  # low precision: NHWC
    assert (resolved.note is None) == (cpu_native is not None)  # emulated: said


def test_amp_aliases(cpu_native):
    infer = speed.speed_policy(parse("infer", [*TOOL_ARGV["infer"], "--amp"]), "infer")
    train = speed.speed_policy(parse("train", ["c.py", "--amp"]), "train")
    assert infer.precision == train.precision == "auto"
    on = speed.speed_policy(parse("infer", [*TOOL_ARGV["infer"], "--amp", "on"]), "infer")
    assert on.precision == "bf16"
    assert speed.speed_policy(parse("infer", [*TOOL_ARGV["infer"], "--amp", "off"]), "infer") == (
        SpeedPolicy()
    )
    clash = parse("infer", [*TOOL_ARGV["infer"], "--amp", "off", "--precision", "bf16"])
    with pytest.raises(ConfigError, match="disagree"):
        speed.speed_policy(clash, "infer")


def test_cuda_resolution():
    """Resolving needs no GPU: auto is float16 on CUDA, channels-last even in float32."""
    assert SpeedPolicy.fast("infer").resolve("cuda").name == "fp16+cl+fuse"
    assert SpeedPolicy().resolve("cuda:0").channels_last


def test_suffix_vocabulary():
    path, policy, extra = split_variant("mmseg::ann/x.py+bf16+cl+cp+withcp", "train")
    assert path == "mmseg::ann/x.py" and extra == ("withcp",)
    assert policy == SpeedPolicy(precision="bf16", channels_last=True, checkpoint=True)
    _, amp, _ = split_variant("x.py+amp")
    assert amp.autocast and amp.precision == "auto" and amp.channels_last is False
    assert split_variant("x.py")[1] == SpeedPolicy(channels_last=False)  # as written
    for bad, message in (("x.py+turbo", "unknown suffix"), ("x.py+bf16+fp16", "two precisions")):
        with pytest.raises(ConfigError, match=message):
            split_variant(bad)
    with pytest.raises(ConfigError, match="precision must be one of"):
        SpeedPolicy(precision="int8")


HEADS = {
    "ANNSegHead": dict(in_channels=[8, 16], in_index=[0, 1], channels=8, key_channels=4),
    "APNBSegHead": dict(in_channels=16, in_index=1, channels=8, key_channels=4),
    "NLSegHead": dict(in_channels=16, in_index=1, channels=8),
    "CGNLSegHead": dict(in_channels=16, in_index=1, channels=8, groups=2),
}


def _head(name):
    head = MODELS.build(dict(type=name, num_classes=5, norm_cfg=dict(type="BN"), **HEADS[name]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for m in head.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return head.eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(HEADS))
def test_heads_in_low_precision_match_their_float64_selves(name, dtype, single_thread):
    """The cast-weights path of ``apply_inference_speed`` on a head: every layer in the low
    dtype but the classifier, whose logits are float32."""
    feats = [torch.randn(2, 8, 13, 11), torch.randn(2, 16, 7, 9)]
    head = _head(name)
    with torch.no_grad():
        reference = head.double()([f.double() for f in feats])
        holder = torch.nn.Module()  # apply_inference_speed finds the parts by name
        holder.decode_head = head.float()
        policy = SpeedPolicy(precision="fp16" if dtype == torch.float16 else "bf16")
        speed.apply_inference_speed(holder, policy.resolve("cpu"))
        assert head.conv_seg.weight.dtype == torch.float32
        out = head([f.to(dtype) for f in feats])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    error = ((out.double() - reference).norm() / reference.norm()).item()
    assert error < {torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype], error
