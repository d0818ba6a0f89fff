"""The fast training mode (``ann_seg.mmseg.fast``, ``tools/train.py --fast``): the same
outputs, gradients and BatchNorm statistics as the plain model, checkpoints that load into it,
and the same loss curve through mmengine's Runner."""

import copy
import glob
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn
from _helpers import CONFIGS, REPO, as_cli, randomize_, run_tool, tiny_demo_options

from ann_seg.benchmark.models import build_benchmark_model, random_data_samples, split_variant
from ann_seg.layers import (
    AFNB,
    APNB,
    AttentionFusionBlock,
    PyramidPoolingSampler,
    is_activation_checkpointed,
)
from ann_seg.layers.checkpointing import set_activation_checkpointing
from ann_seg.mmseg import (
    FastTrainingHook,
    build_segmentor,
    enable_fast_training,
    speed,
)
from ann_seg.mmseg.builder import load_weights
from ann_seg.mmseg.config import ConfigError, load_config
from ann_seg.mmseg.fast import RESIDUAL_BLOCKS
from ann_seg.mmseg.synthetic import generate_long_range_dataset

pytestmark = pytest.mark.usefixtures("single_thread_module")

DEMO = osp.join(CONFIGS, "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")
TRAIN = osp.join(REPO, "tools", "train.py")
SHAPE = (64, 128)
CL = torch.channels_last


def demo_model(seed=0):
    """The demo segmentor with random weights and BN statistics (a zero-initialised W_o would
    hide a wrong fusion), in train mode."""
    return randomize_(build_segmentor(DEMO), seed=seed, std=0.2).train()


def batch(model, size=2, seed=1):
    torch.manual_seed(seed)
    images = torch.randn(size, 3, *SHAPE)
    return images, random_data_samples(model.decode_head.num_classes, SHAPE, size, "cpu")


def total_loss(losses):
    return sum(v for k, v in losses.items() if "loss" in k)


def close(a, b, rtol=1e-4, atol=0.0):
    """Equal within float tolerance, relative to the tensor's scale."""
    scale = max(a.abs().max().item(), 1e-6)
    return (a - b).abs().max().item() <= rtol * scale + atol


def step(model, images, samples, seed=123):
    """One training forward + backward (dropout seeded); returns (loss, grads, BN buffers)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = total_loss(model.loss(images, samples))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return loss.detach(), grads, buffers


@pytest.mark.parametrize("checkpoint", [False, True], ids=["fast", "fast+checkpoint"])
def test_fast_mode_computes_what_the_plain_model_computes(checkpoint):
    plain = demo_model()
    fast = copy.deepcopy(plain)
    counts = enable_fast_training(fast, checkpoint=checkpoint, channels_last=True)
    assert counts["attention_blocks"] == 2 and counts["channels_last_input"] == 1
    images, samples = batch(plain)

    # training forward (dropout active, same seed): logits of the decode head
    torch.manual_seed(7)
    expected = plain(images, mode="tensor")
    torch.manual_seed(7)
    got = fast(images, mode="tensor")
    assert close(expected, got), (expected - got).abs().max()

    # one step: loss, every gradient, every BatchNorm buffer after the update
    loss, grads, buffers = step(plain, images, samples)
    fast_loss, fast_grads, fast_buffers = step(fast, images, samples)
    assert torch.allclose(loss, fast_loss, rtol=1e-5), (loss, fast_loss)
    assert grads.keys() == fast_grads.keys() and len(grads) > 50
    # biases right before a BatchNorm (W_o's, g's) have a zero gradient in exact arithmetic:
    # both sides are rounding noise there (~1e-9), so add an absolute floor
    floor = 1e-5 * max(g.abs().max().item() for g in grads.values())
    bad = [n for n in grads if not close(grads[n], fast_grads[n], rtol=1e-3, atol=floor)]
    assert not bad, bad[:5]
    # checkpointing must not update BN statistics twice (the recomputation replays the forward)
    bad = [n for n in buffers if not close(buffers[n].float(), fast_buffers[n].float())]
    assert not bad, bad[:5]

    # eval mode: the running statistics just updated
    plain.eval(), fast.eval()
    with torch.no_grad():
        assert close(plain(images, mode="tensor"), fast(images, mode="tensor"))


def test_channels_last_is_on_for_cuda_only_by_default():
    model = demo_model()
    counts = enable_fast_training(model)  # a CPU model: contiguous (did not pay here)
    assert counts["channels_last_input"] == 0 and counts["attention_blocks"] == 2
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(b.factored_fusion for b in model.modules() if isinstance(b, AttentionFusionBlock))
    if torch.cuda.is_available():
        assert enable_fast_training(demo_model().cuda())["channels_last_input"] == 1


def test_fast_mode_is_channels_last_end_to_end():
    model = demo_model()
    enable_fast_training(model, channels_last=True)
    formats = []
    stem = model.backbone.stem[0]
    stem.register_forward_pre_hook(
        lambda m, args: formats.append(args[0].is_contiguous(memory_format=CL))
    )
    fusion_inputs = []
    model.decode_head.fusion.register_forward_pre_hook(
        lambda m, args: fusion_inputs.append(all(a.is_contiguous(memory_format=CL) for a in args))
    )
    images, _ = batch(model)
    assert images.is_contiguous()  # contiguous, as the data preprocessor stacks them
    out = model(images, mode="tensor")
    assert formats == [True] and fusion_inputs == [True]
    assert out.is_contiguous(memory_format=CL)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=CL) for c in convs)
    blocks = [m for m in model.modules() if isinstance(m, AttentionFusionBlock)]
    assert len(blocks) == 2 and all(b.factored_fusion for b in blocks)
    enable_fast_training(model, channels_last=True)  # twice: one input hook
    assert len(model.backbone._forward_pre_hooks) == 1


def saved_activation_bytes(model, images, samples):
    """Bytes the autograd graph keeps for backward after one training forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = total_loss(model.loss(images, samples))
    loss.backward()
    return total


def test_checkpointing_keeps_fewer_activations_and_covers_every_block():
    fast = demo_model()
    enable_fast_training(fast)
    fast_cp = copy.deepcopy(fast)
    counts = enable_fast_training(fast_cp, checkpoint=True)
    blocks = [
        m for m in fast_cp.modules() if isinstance(m, RESIDUAL_BLOCKS + (AttentionFusionBlock,))
    ]
    assert counts["checkpointed"] == len(blocks) == 8 + 2  # ResNet-18: 8 blocks; AFNB, APNB
    assert all(is_activation_checkpointed(b) for b in blocks)
    assert not any(is_activation_checkpointed(b) for b in fast.modules())
    images, samples = batch(fast)
    plain_bytes = saved_activation_bytes(fast, images, samples)
    checkpointed_bytes = saved_activation_bytes(fast_cp, images, samples)
    assert checkpointed_bytes < 0.5 * plain_bytes, (checkpointed_bytes, plain_bytes)


def test_checkpointing_alone_is_exact_and_reversible():
    """A block with BatchNorm and dropout: same output, gradients and statistics; mmseg-style
    plain checkpointing would update the statistics twice."""
    torch.manual_seed(0)
    block = randomize_(APNB(8, 8, key_channels=4, dropout=0.2), std=0.3).train()
    other = copy.deepcopy(block)
    set_activation_checkpointing(other)
    x = torch.randn(2, 8, 6, 10, requires_grad=True)
    outs = []
    for module in (block, other):
        torch.manual_seed(3)
        y = module(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), x.grad.clone(), module.fuse.norm.running_mean.clone()))
        x.grad = None
    for a, b in zip(*outs):
        assert close(a, b), (a - b).abs().max()
    set_activation_checkpointing(other, False)
    assert not is_activation_checkpointed(other) and "forward" not in other.__dict__
    assert other.state_dict().keys() == block.state_dict().keys()


def test_benchmark_variants_call_the_fast_mode(monkeypatch):
    config = "ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py"
    path, policy, extra = split_variant(config + "+fast+cp", "train")
    assert (path, policy.precision, policy.fast_graph, policy.checkpoint) == (config, "auto", 1, 1)
    # a CPU without native low precision: +fast is float32 and, as in training, contiguous
    monkeypatch.setattr(speed, "native_low_precision_dtype", lambda device: None)
    _, model = build_benchmark_model(config + "+fast+cp", mode="train")
    assert model.decode_head.fusion.factored_fusion
    assert is_activation_checkpointed(model.decode_head.context)
    assert model.backbone.stem[0].weight.is_contiguous()
    assert model.benchmark_speed.name == "fp32+fast+cp"
    _, model = build_benchmark_model(config + "+fast+cl", mode="train")  # forced
    assert model.backbone.stem[0].weight.is_contiguous(memory_format=CL)
    assert model.decode_head.fusion.factored_fusion
    # native bf16: +fast trains channels-last under bf16 autocast
    monkeypatch.setattr(speed, "native_low_precision_dtype", lambda device: torch.bfloat16)
    _, model = build_benchmark_model(config + "+fast", mode="train")
    assert model.backbone.stem[0].weight.is_contiguous(memory_format=CL)
    assert model.benchmark_speed.name == "bf16+cl+fast"
    _, model = build_benchmark_model(config + "+cp", mode="train")  # checkpointing alone
    assert is_activation_checkpointed(model.decode_head.fusion)
    assert not model.decode_head.fusion.factored_fusion
    assert model.backbone.stem[0].weight.is_contiguous()
    _, model = build_benchmark_model(config + "+withcp", mode="train")
    assert all(b.with_cp for b in model.modules() if isinstance(b, RESIDUAL_BLOCKS))


def test_speed_policy_writes_the_training_config(monkeypatch):
    monkeypatch.setattr(speed, "native_low_precision_dtype", lambda device: torch.bfloat16)
    cfg = load_config(DEMO)
    policy = speed.SpeedPolicy.fast("train", checkpoint=True)
    speed.apply_training_speed(cfg, policy.resolve("cpu"))
    hook = dict(type="FastTrainingHook", checkpoint=True, channels_last=True, factored_fusion=True)
    assert hook in cfg.custom_hooks
    assert cfg.custom_hooks[0]["type"] == "SkippedSamplesHook"  # the config's own stays
    assert cfg.optim_wrapper.type == "CPUAutocastOptimWrapper"
    assert cfg.optim_wrapper.dtype == "bfloat16"
    speed.apply_training_speed(cfg, policy.resolve("cpu"))  # again: the hook replaced
    assert sum(h["type"] == "FastTrainingHook" for h in cfg.custom_hooks) == 1
    # fp16 on CUDA: mmengine's AMP wrapper with dynamic loss scaling; bf16 without scaling
    for precision, scale in (("fp16", "dynamic"), ("bf16", 1.0)):
        cfg = load_config(DEMO)
        speed.apply_training_speed(cfg, speed.SpeedPolicy(precision=precision).resolve("cuda"))
        assert cfg.optim_wrapper.type == "AmpOptimWrapper"
        assert cfg.optim_wrapper.loss_scale == scale
    with pytest.raises(ConfigError, match="fp16 training needs CUDA"):
        speed.apply_training_speed(
            load_config(DEMO), speed.SpeedPolicy(precision="fp16").resolve("cpu")
        )
    with pytest.raises(ConfigError, match="channels_last must be True or False, got 'no'"):
        FastTrainingHook(channels_last="no")


# --- through mmengine's Runner (tools/train.py) ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast_data")
    generate_long_range_dataset(
        str(root), layout="cityscapes", num_train=8, num_val=2, size=SHAPE, progress=False
    )
    return str(root)


def demo_options(data_root, max_iters):
    """The tiny demo run on 64x128 images."""
    return dict(tiny_demo_options(data_root, max_iters), **{"model.data_preprocessor.size": SHAPE})


def train_log(tmp_path, name, data_root, max_iters, *flags):
    work = str(tmp_path / name)
    proc = run_tool(
        [TRAIN, DEMO, *flags, "--work-dir", work, "--cfg-options"]
        + as_cli(demo_options(data_root, max_iters)),
        cwd=str(tmp_path),
        env={"OMP_NUM_THREADS": "1"},
    )
    losses = [float(v) for v in re.findall(r"Iter\(train\) .*? loss: ([0-9.eE+-]+)", proc.stdout)]
    return work, proc.stdout + proc.stderr, losses


@pytest.mark.slow
def test_fast_training_runs_and_its_checkpoint_loads_into_the_plain_model(tiny_data, tmp_path):
    flags = ("--fast-checkpoint", "--precision", "fp32")  # fp32 on the CPU: contiguous
    work, log, losses = train_log(tmp_path, "fast", tiny_data, 3, *flags)
    assert "fast training mode: contiguous, 2 attention block(s)" in log, log[-3000:]
    assert "10 block(s) checkpointed" in log
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    (checkpoint,) = glob.glob(osp.join(work, "iter_3.pth"))
    plain = build_segmentor(DEMO)
    load_weights(plain, checkpoint, config=DEMO)  # strict: every key, no extra ones
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert state.keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.slow
def test_plain_and_fast_loss_curves_agree(tiny_data, tmp_path):
    """50 iterations, same seed and data order: every logged loss within 1 % (the issue's
    goal) and in fact within 0.1 %: on this tiny set, training from another random
    initialisation (what converting to channels-last before the weights are initialised
    gives) stays within 0.4 %, so 1 % alone would not catch it."""
    iters = 50
    _, _, plain = train_log(tmp_path, "plain", tiny_data, iters)
    _, log, fast = train_log(tmp_path, "fast", tiny_data, iters, "--fast", "--precision", "fp32")
    assert "fast training mode" in log
    assert len(plain) == len(fast) == iters
    assert plain[0] != plain[-1]  # it trains
    worst = max(abs(a - b) / abs(a) for a, b in zip(plain, fast))
    assert worst <= 0.01, list(zip(plain, fast))
    assert worst <= 0.001, list(zip(plain, fast))


@pytest.mark.parametrize("fusion", ["concat", "add"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_factored_fusion_equals_the_plain_block(fusion, channels_last):
    """Both layouts (two GEMMs over B N tokens, or batched over B), both fusions, AFNB's two
    inputs of different sizes: output and every gradient."""
    torch.manual_seed(0)
    plain = randomize_(AFNB(6, 8, 10, key_channels=4, fusion=fusion, dropout=0.0), std=0.3)
    plain.train()
    fast = copy.deepcopy(plain)
    fast.factored_fusion = True
    fmt = CL if channels_last else torch.contiguous_format
    if channels_last:
        fast.to(memory_format=CL)
    low = torch.randn(3, 6, 5, 7).contiguous(memory_format=fmt)
    high = torch.randn(3, 8, 4, 6).contiguous(memory_format=fmt)
    outs = []
    for module in (plain, fast):
        y = module(low, high)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), {n: p.grad for n, p in module.named_parameters()}))
    assert close(outs[0][0], outs[1][0]), (outs[0][0] - outs[1][0]).abs().max()
    assert outs[1][0].is_contiguous(memory_format=fmt)
    floor = 1e-5 * max(g.abs().max().item() for g in outs[0][1].values())
    for name, grad in outs[0][1].items():
        assert close(grad, outs[1][1][name], rtol=1e-3, atol=floor), name
    # eval mode, with the statistics of that step: a per-channel constant (W_o's bias term),
    # which the training-mode BatchNorm cancels, shows here
    plain.eval(), fast.eval()
    with torch.no_grad():
        assert close(plain(low, high), fast(low, high))


def test_pyramid_pooling_of_a_channels_last_batch():
    x = torch.randn(3, 5, 7, 9)
    sampler = PyramidPoolingSampler((1, 3, 6))
    expected = sampler(x)
    got = sampler(x.contiguous(memory_format=CL))
    assert got.shape == expected.shape and close(expected, got, rtol=1e-6)
    assert got.transpose(1, 2).is_contiguous()  # the (B, S, C) layout attention reads
