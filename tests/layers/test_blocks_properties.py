"""Properties of the non-local block family: gradients, identity at initialisation, backend
agreement, mixed precision, the full non-local limit of APNB, argument checking and the
runnable example in docs/blocks.md."""

import math
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F
from _helpers import randomize_
from torch.func import functional_call

from ann_seg.layers import AFNB, APNB, CGNLBlock, IdentitySampler, NonLocalBlock, attend, compat

NL_MODES = ["embedded_gaussian", "gaussian", "dot_product", "concatenation"]
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "blocks.md"


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one intra-op thread


def randn(*shape, seed=1, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rel_err(out, ref, base=None):
    denom = ref if base is None else ref - base
    return ((out.double() - ref.double()).norm() / denom.double().norm()).item()


# ----------------------------------------------------------------------------- gradcheck
def gradcheck_module(module, *inputs):
    """float64 gradcheck w.r.t. the inputs *and* every parameter (random, BN in eval)."""
    module = randomize_(module).double()
    names, params = zip(*module.named_parameters())

    def fn(*args):
        xs, ps = args[: len(inputs)], args[len(inputs) :]
        return functional_call(module, dict(zip(names, ps)), xs)

    args = tuple(x.double().requires_grad_() for x in inputs) + tuple(
        p.detach().clone().requires_grad_() for p in params
    )
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("mode", NL_MODES)
def test_gradcheck_nonlocal_2d(mode, sub_sample):
    gradcheck_module(NonLocalBlock(3, 2, mode=mode, sub_sample=sub_sample), randn(2, 3, 3, 4))


@pytest.mark.parametrize("dims,spatial", [(1, (5,)), (3, (2, 2, 3))])
@pytest.mark.parametrize("mode", ["embedded_gaussian", "concatenation"])
def test_gradcheck_nonlocal_1d_3d(mode, dims, spatial):
    gradcheck_module(
        NonLocalBlock(3, 2, mode=mode, dims=dims, sub_sample=True), randn(2, 3, *spatial)
    )


@pytest.mark.parametrize(
    "kernel,rbf_norm", [("dot", "released"), ("gaussian", "released"), ("gaussian", "exact")]
)
def test_gradcheck_cgnl(kernel, rbf_norm):
    gradcheck_module(
        CGNLBlock(4, 4, groups=2, kernel=kernel, gamma=0.2, rbf_norm=rbf_norm, use_scale=True),
        randn(2, 4, 2, 3),
    )


@pytest.mark.parametrize("share", ["query_key", "key_value", "none"])
def test_gradcheck_apnb(share):
    gradcheck_module(APNB(3, 2, key_channels=2, pool_sizes=(1, 2), share=share), randn(2, 3, 3, 4))


def test_gradcheck_afnb():
    gradcheck_module(
        AFNB(2, 3, 2, key_channels=2, pool_sizes=(1, 2)),
        randn(2, 2, 4, 3, seed=2),
        randn(2, 3, 2, 3, seed=3),
    )


@pytest.mark.parametrize(
    "pairwise,backend",
    [
        ("softmax", "sdpa"),
        ("softmax", "explicit"),
        ("dot", "auto"),
        ("dot", "explicit"),
        ("concat", "auto"),
        ("concat", "explicit"),
    ],
)
def test_gradcheck_attend(pairwise, backend):
    ck = 1 if pairwise == "concat" else 3
    q, k, v = randn(2, 5, ck, seed=1), randn(2, 7, ck, seed=2), randn(2, 7, 4, seed=3)
    if pairwise == "concat":
        # ReLU(a_i + b_j) has a kink at a_i + b_j = 0: keep every pair away from it
        gaps = (q[:, :, None, 0] + k[:, None, :, 0]).abs()
        assert gaps.min() > 1e-3
    args = tuple(t.double().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda a, b, c: attend(a, b, c, pairwise, scale=0.7, backend=backend), args
    )


# ----------------------------------------------------------------------------- identity
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("norm_layer", ["bn", None])
@pytest.mark.parametrize("dims,spatial", [(1, (5,)), (2, (3, 5)), (2, (1, 1)), (3, (2, 3, 3))])
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("mode", NL_MODES)
def test_nonlocal_identity_at_init(mode, sub_sample, dims, spatial, norm_layer, train):
    block = NonLocalBlock(
        6, mode=mode, dims=dims, sub_sample=sub_sample, norm_layer=norm_layer
    ).train(train)
    x = randn(2, 6, *spatial)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dims,spatial", [(1, (5,)), (2, (3, 5)), (3, (2, 3, 3))])
@pytest.mark.parametrize("kernel", ["gaussian", "dot"])
def test_cgnl_identity_at_init(kernel, dims, spatial, train):
    block = CGNLBlock(16, kernel=kernel, dims=dims).train(train)
    assert block.norm.weight.abs().sum() == 0 and block.norm.bias.abs().sum() == 0
    x = randn(2, 16, *spatial)
    assert torch.equal(block(x), x)


# ----------------------------------------------------------------------------- backends
def _pair(factory, inputs, backends=("sdpa", "explicit")):
    outs = []
    for backend in backends:
        block = randomize_(factory(backend))
        with torch.no_grad():
            outs.append(block(*inputs))
    return outs


@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("mode", NL_MODES)
def test_nonlocal_backends_agree(mode, sub_sample):
    x = randn(2, 8, 7, 6)
    for backends in (("sdpa", "explicit"), ("auto", "explicit")):
        a, b = _pair(
            lambda be: NonLocalBlock(8, mode=mode, sub_sample=sub_sample, backend=be),
            (x,),
            backends,
        )
        assert rel_err(a, b, x) < 1e-5


def test_apnb_afnb_backends_agree():
    x = randn(2, 8, 9, 7)
    a, b = _pair(lambda be: APNB(8, 6, key_channels=4, backend=be), (x,))
    assert rel_err(a, b) < 1e-5
    x_low, x_high = randn(2, 5, 9, 7, seed=2), randn(2, 8, 5, 4, seed=3)
    a, b = _pair(lambda be: AFNB(5, 8, 6, key_channels=4, backend=be), (x_low, x_high))
    assert rel_err(a, b) < 1e-5


# ----------------------------------------------------------------------------- autocast
BF16_TOL = 3e-2  # bf16 keeps 8 mantissa bits (~4e-3 per rounding); convs add a few roundings


def _bf16_vs_fp32(block, *inputs):
    with torch.no_grad():
        ref = block(*inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(*inputs)
    assert torch.isfinite(out).all()
    return out, ref


@pytest.mark.parametrize("magnitude", [1.0, 1e3])
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("mode", NL_MODES)
def test_nonlocal_bf16_autocast(mode, sub_sample, magnitude):
    block = randomize_(NonLocalBlock(16, 8, mode=mode, sub_sample=sub_sample), std=0.3)
    x = randn(2, 16, 9, 11) * magnitude
    out, ref = _bf16_vs_fp32(block, x)
    if mode == "gaussian" and magnitude > 1:
        # the regime where a naive low-precision softmax breaks: exp of the raw logits is inf
        logits = torch.einsum("bci,bcj->bij", x.flatten(2), x.flatten(2)).bfloat16()
        assert torch.isinf(torch.exp(logits * block.scale)).any()
    if mode == "embedded_gaussian" and magnitude > 1:
        # logits ~1e5 from bf16-rounded theta/phi carry absolute errors >> 1: the softmax of
        # *any* bf16 projection differs from float32; it must stay finite (checked above) and
        # the core itself is exact on bf16 inputs (test_attend_bf16_large_logits)
        return
    assert rel_err(out, ref, x) < BF16_TOL


@pytest.mark.parametrize("magnitude", [1.0, 1e3])
@pytest.mark.parametrize("kernel", ["gaussian", "dot"])
def test_cgnl_bf16_autocast(kernel, magnitude):
    block = randomize_(CGNLBlock(16, 8, groups=4, kernel=kernel), std=0.3)
    x = randn(2, 16, 9, 11) * magnitude
    out, ref = _bf16_vs_fp32(block, x)
    assert rel_err(out, ref, x) < BF16_TOL


@pytest.mark.parametrize("magnitude", [1.0, 1e3])
def test_apnb_afnb_bf16_autocast(magnitude):
    """Finite at any magnitude; close to float32 where the bf16-rounded projections leave the
    logits accurate (at 1e3 they are ~1e5: see test_attend_bf16_large_logits for the core)."""
    x = randn(2, 16, 9, 11) * magnitude
    out, ref = _bf16_vs_fp32(randomize_(APNB(16, 8, key_channels=8), std=0.3), x)
    x_low = randn(2, 8, 13, 11, seed=2) * magnitude
    out2, ref2 = _bf16_vs_fp32(randomize_(AFNB(8, 16, 8, key_channels=8), std=0.3), x_low, x)
    if magnitude == 1:
        assert rel_err(out, ref) < BF16_TOL and rel_err(out2, ref2) < BF16_TOL


def test_attend_bf16_large_logits():
    """bf16 query/key with logits ~1e6: a naive bf16 softmax overflows; the core computes in
    float32 and matches a float32 softmax of the same (bf16-valued) inputs."""
    q, k, v = (randn(2, 40, 8, seed=s) * 1e3 for s in (1, 2, 3))
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    assert torch.isinf(torch.exp(torch.bmm(q, k.transpose(1, 2)))).any()
    ref = torch.softmax(torch.bmm(q.float(), k.float().transpose(1, 2)) * 8**-0.5, -1)
    ref = torch.bmm(ref, v.float())
    for backend in ("sdpa", "explicit"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attend(q, k, v, "softmax", backend=backend)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("pairwise", ["softmax", "dot", "concat"])
@pytest.mark.skipif(
    not compat.HAS_CPU_FLOAT16_AUTOCAST, reason="this torch autocasts only bfloat16 on the CPU"
)
def test_attend_fp16_autocast_no_overflow(pairwise):
    """Sums over S = 4096 anchors exceed the float16 range (65504) although the normalised
    result does not: the core must accumulate in float32 under autocast. Inputs are float16,
    as a block's projections produce them under autocast."""
    ck = 1 if pairwise == "concat" else 4
    q, k, v = (
        (randn(1, n, c, seed=s) + 3) * 4 for n, c, s in ((64, ck, 1), (4096, ck, 2), (4096, 8, 3))
    )
    q, k, v = q.half(), k.half(), v.half()
    ref = attend(q.float(), k.float(), v.float(), pairwise, scale=0.01)
    with torch.autocast("cpu", dtype=torch.float16):
        out = attend(q, k, v, pairwise, scale=0.01)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert rel_err(out, ref) < 2e-3


# ----------------------------------------------------------------------------- APNB limit
def _conv(x, conv):
    y = torch.einsum("oc,bc...->bo...", conv.weight.flatten(1), x)
    return y if conv.bias is None else y + conv.bias.view(1, -1, *[1] * (x.dim() - 2))


def _cbr(x, m, act=True):
    bn = m.norm
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (_conv(x, m.conv) - bn.running_mean.view(shape)) / torch.sqrt(
        bn.running_var.view(shape) + bn.eps
    ) * bn.weight.view(shape) + bn.bias.view(shape)
    return F.relu(y) if act else y


@pytest.mark.parametrize("spatial", [(1, 1), (3, 5), (6, 7)])
def test_apnb_identity_sampler_is_full_non_local(spatial):
    """With every position an anchor (S = N), APNB is the full non-local block:
    o_i = sum_{j in all N} softmax_j(theta_i . theta_j / sqrt(C')) g_j."""
    block = randomize_(APNB(6, 5, key_channels=4, sampler=IdentitySampler())).double()
    x = randn(2, 6, *spatial, dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
        att = block.attention
        theta = _cbr(x, att.key_proj).flatten(2)  # query = key (shared)
        g = _conv(x, att.value_proj).flatten(2)
        n = theta.shape[-1]
        o = torch.zeros_like(g)
        for i in range(n):  # explicit loop over queries
            w = torch.softmax(torch.einsum("bc,bcj->bj", theta[..., i], theta) / 2.0, -1)
            o[..., i] = torch.einsum("bj,bcj->bc", w, g)
        o = _conv(o.reshape(2, -1, *spatial), att.out_proj)
        ref = _cbr(torch.cat([o, x], 1), block.fuse)
    assert rel_err(out, ref) < 1e-10


# ----------------------------------------------------------------------------- arguments
BAD_ARGS = [
    (lambda: NonLocalBlock(8, inter_channels=0), "inter_channels"),
    (lambda: NonLocalBlock(8, mode="foo"), "mode"),
    (lambda: NonLocalBlock(8, dims=4), "dims"),
    (lambda: NonLocalBlock(8, backend="cuda"), "backend"),
    (lambda: NonLocalBlock(8, norm_layer="gn"), "norm_layer"),
    (lambda: NonLocalBlock(0), "in_channels"),
    (lambda: CGNLBlock(16, inter_channels=0), "inter_channels"),
    (lambda: CGNLBlock(12), "groups"),  # 8 does not divide 12
    (lambda: CGNLBlock(16, 12, groups=8), "groups"),  # ... nor inter_channels 12
    (lambda: CGNLBlock(16, groups=0), "groups"),
    (lambda: CGNLBlock(16, kernel="foo"), "kernel"),
    (lambda: CGNLBlock(16, order=-1), "order"),
    (lambda: CGNLBlock(16, gamma=0.0), "gamma"),
    (lambda: CGNLBlock(16, rbf_norm="foo"), "rbf_norm"),
    (lambda: APNB(8, 8, pool_sizes=()), "pool_sizes"),
    (lambda: APNB(8, 8, key_channels=0), "key_channels"),
    (lambda: APNB(8, 8, share="foo"), "share"),
    (lambda: APNB(8, 8, fusion="foo"), "fusion"),
    (lambda: AFNB(8, 8, 8, key_channels=0), "key_channels"),
    (lambda: AFNB(8, 8, 8, pool_sizes=()), "pool_sizes"),
    (
        lambda: attend(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), "foo"),
        "pairwise",
    ),
]


@pytest.mark.parametrize(
    "factory,name", BAD_ARGS, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD_ARGS)]
)
def test_bad_arguments_raise_value_error(factory, name):
    with pytest.raises(ValueError, match=name):
        factory()


WRONG_INPUTS = [
    (lambda: NonLocalBlock(8), (torch.zeros(1, 7, 4, 4),), r"expected input of shape \(B, 8"),
    (lambda: NonLocalBlock(8, dims=3), (torch.zeros(1, 8, 4, 4),), r"\(B, 8, \*, \*, \*\)"),
    (lambda: CGNLBlock(16), (torch.zeros(1, 8, 4, 4),), r"expected input of shape \(B, 16"),
    (lambda: APNB(8, 4), (torch.zeros(1, 4, 4, 4),), r"expected input of shape \(B, 8"),
    (
        lambda: AFNB(4, 8, 4),
        (torch.zeros(1, 5, 4, 4), torch.zeros(1, 8, 2, 2)),
        r"expected x_low of shape \(B, 4",
    ),
]


@pytest.mark.parametrize("factory,inputs,message", WRONG_INPUTS)
def test_wrong_input_channels_raise(factory, inputs, message):
    with pytest.raises(ValueError, match=message):
        factory()(*inputs)


# ----------------------------------------------------------------------------- docs
def test_docs_example_runs():
    """The example in docs/blocks.md is executed as written."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert blocks, f"no python example in {DOCS}"
    for code in blocks:
        exec(compile(code, str(DOCS), "exec"), {"__name__": "docs_example"})


def test_cgnl_scale_matches_released_definition():
    """use_scale divides the group sum by sqrt(C'/G * N) (released: sqrt(c*h*w) per group)."""
    block = randomize_(CGNLBlock(8, 4, groups=2, kernel="dot")).double()
    x = randn(1, 8, 3, 5, dtype=torch.float64)
    seen = []
    block.out_proj.register_forward_hook(lambda m, i, o: seen.append(i[0]) and None)
    with torch.no_grad():
        block(x)
        block.use_scale = True
        block(x)
    assert torch.allclose(seen[1] * math.sqrt(4 // 2 * 15), seen[0])
