"""Every block against a plain float64 reference written from its paper's equations.

The references below use only the modules' *weights* (copied in); they recompute projections,
pooling, pairwise functions and norms with explicit einsums / loops over positions, so they
share no code path with the blocks. All weights are random (zero-inits would trivialise the
comparison) and BatchNorms are in eval mode with random running statistics.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import randomize_

from ann_seg.layers import AFNB, APNB, CGNLBlock, NonLocalBlock

# low precision: the weights and input cast (what --precision bf16/fp16 inference does); bf16
# keeps 8 mantissa bits (relative rounding 2^-9), fp16 11 bits (2^-12), errors accumulate
# over a few layers
TOL = {torch.float64: 1e-6, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 4e-3}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
SHAPES = {1: [(1,), (7,)], 2: [(1, 1), (3, 5), (6, 4)], 3: [(1, 1, 1), (2, 3, 5)]}
DIMS_SHAPES = [(d, s) for d, shapes in SHAPES.items() for s in shapes]


# ----------------------------------------------------------------------------- helpers
pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one intra-op thread


def rand_input(shape, seed=1, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rel_err(out, ref, base=None):
    """``|out - ref| / |ref - base|``: with ``base = x`` the residual does not hide errors."""
    denom = ref if base is None else ref - base.double()
    return ((out.double() - ref).norm() / denom.norm()).item()


def _w(t):
    return t.detach().double()


def conv1x1(x, conv, groups=1):
    """1x1 conv as an einsum over channels (grouped: block-diagonal weight)."""
    weight = _w(conv.weight).flatten(1)  # (Cout, Cin / groups)
    outs = [
        torch.einsum("oc,bc...->bo...", wk, xk)
        for wk, xk in zip(weight.chunk(groups, 0), x.chunk(groups, 1))
    ]
    y = torch.cat(outs, 1)
    if conv.bias is not None:
        y = y + _w(conv.bias).view(1, -1, *[1] * (x.dim() - 2))
    return y


def bn_eval(x, bn):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - _w(bn.running_mean).view(shape)) / torch.sqrt(
        _w(bn.running_var).view(shape) + bn.eps
    ) * _w(bn.weight).view(shape) + _w(bn.bias).view(shape)


def group_norm(x, gn):
    b, c = x.shape[:2]
    xg = x.reshape(b, gn.num_groups, -1)
    mean = xg.mean(-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(-1, keepdim=True)
    xn = ((xg - mean) / torch.sqrt(var + gn.eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return xn * _w(gn.weight).view(shape) + _w(gn.bias).view(shape)


def max_pool2_ref(x):
    """Max over windows ``[2k, min(2k + 2, L))`` on every spatial dim -> ``(B, C, S)``."""
    spatial = x.shape[2:]
    cells = []
    for starts in itertools.product(*[range(0, n, 2) for n in spatial]):
        window = tuple(slice(s, min(s + 2, n)) for s, n in zip(starts, spatial))
        cells.append(x[(slice(None), slice(None)) + window].flatten(2).amax(-1))
    return torch.stack(cells, -1)


def pyramid_ref(x, pool_sizes):
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    return torch.cat([pool[x.dim() - 2](x, s).flatten(2) for s in pool_sizes], -1)


def nonlocal_sum(q, k, v, pairwise, scale=1.0, w_f=None):
    """``y_i = 1/C sum_j f(q_i, k_j) v_j`` with the pairwise matrix written out.

    q ``(B, Ck, N)``, k ``(B, Ck, S)``, v ``(B, Cv, S)`` -> ``(B, Cv, N)``.
    """
    n, s = q.shape[-1], k.shape[-1]
    if pairwise == "softmax":  # exp(s q.k) / sum_j exp(s q.k)
        logits = torch.einsum("bci,bcj->bij", q, k) * scale
        f = torch.exp(logits - logits.amax(-1, keepdim=True))
        norm = f.sum(-1, keepdim=True)
    elif pairwise == "dot":  # q.k / S
        f, norm = torch.einsum("bci,bcj->bij", q, k), s
    else:  # ReLU(w_f^T [q_i, k_j]) / S, B x 2C' x N x S
        cat = torch.cat(
            [q[..., :, None].expand(-1, -1, n, s), k[..., None, :].expand(-1, -1, n, s)], 1
        )
        f, norm = F.relu(torch.einsum("c,bcij->bij", w_f, cat)), s
    return torch.einsum("bij,bcj->bci", f / norm, v)


# ----------------------------------------------------------------------------- Non-local
def nonlocal_ref(block, x, mode, sub_sample, use_scale):
    """Wang et al. Eqs. 1-6 (+ sub-sampling of phi and g, Sec. 3.3)."""
    x = x.double()
    b, c = x.shape[:2]
    sample = max_pool2_ref if sub_sample else (lambda t: t.flatten(2))
    if mode == "gaussian":
        theta, phi, ck = x, x, c
    else:
        theta, phi, ck = conv1x1(x, block.theta), conv1x1(x, block.phi), block.inter_channels
    value = sample(conv1x1(x, block.g))
    pairwise = {
        "gaussian": "softmax",
        "embedded_gaussian": "softmax",
        "dot_product": "dot",
        "concatenation": "concat",
    }[mode]
    w_f = _w(block.concat_project.weight).flatten() if mode == "concatenation" else None
    y = nonlocal_sum(
        theta.flatten(2), sample(phi), value, pairwise, ck**-0.5 if use_scale else 1.0, w_f
    )
    z = conv1x1(y.reshape(b, -1, *x.shape[2:]), block.out_proj)
    if block.out_norm is not None:
        z = bn_eval(z, block.out_norm)
    return z + x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims,spatial", DIMS_SHAPES)
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian", "dot_product", "concatenation"])
def test_nonlocal_vs_reference(mode, sub_sample, dims, spatial, dtype):
    use_scale = dims != 2  # both settings are covered
    block = NonLocalBlock(6, 4, mode=mode, dims=dims, sub_sample=sub_sample, use_scale=use_scale)
    randomize_(block, seed=dims).to(dtype)
    x = rand_input((2, 6) + spatial, dtype=dtype)
    with torch.no_grad():
        out = block(x)
    ref = nonlocal_ref(block, x, mode, sub_sample, use_scale)
    assert out.shape == x.shape and out.dtype == dtype
    assert rel_err(out, ref, x) < TOL[dtype]


@pytest.mark.parametrize("mode", ["embedded_gaussian", "concatenation"])
def test_nonlocal_no_norm_vs_reference(mode):
    block = randomize_(NonLocalBlock(5, 3, mode=mode, norm_layer=None)).double()
    x = rand_input((3, 5, 4, 3))
    with torch.no_grad():
        out = block(x)
    assert rel_err(out, nonlocal_ref(block, x, mode, False, True), x) < 1e-6


# ----------------------------------------------------------------------------- CGNL
def rbf_released(order):
    def f(u, w, gamma):
        return math.exp(-2 * gamma) * sum(
            (2 * gamma * u * w) ** p / math.factorial(p) for p in range(order + 1)
        )

    return f


def rbf_exact(order):
    def f(u, w, gamma):
        return (
            torch.exp(-gamma * u * u)
            * torch.exp(-gamma * w * w)
            * sum((2 * gamma * u * w) ** p / math.factorial(p) for p in range(order + 1))
        )

    return f


def cgnl_ref(block, x, pairwise_f, use_scale):
    """Generalized non-local over all (channel, position) element pairs of each group (Eq. 3):
    ``y_e = sum_e' f(theta_e, phi_e') g_e'``, an explicit ``M x M`` kernel per group."""
    x = x.double()
    b = x.shape[0]
    theta, phi, g = (conv1x1(x, m) for m in (block.theta, block.phi, block.g))
    cg = block.inter_channels // block.groups
    y = torch.empty_like(theta)
    for k in range(block.groups):
        chans = slice(k * cg, (k + 1) * cg)
        u, w, v = (t[:, chans].reshape(b, -1) for t in (theta, phi, g))  # (B, M)
        kernel = pairwise_f(u[:, :, None], w[:, None, :], block.gamma)  # (B, M, M)
        yk = torch.einsum("bij,bj->bi", kernel, v)
        if use_scale:
            yk = yk / math.sqrt(u.shape[1])
        y[:, chans] = yk.reshape(y[:, chans].shape)
    z = group_norm(conv1x1(y, block.out_proj, block.groups), block.norm)
    return z + x


CGNL_CASES = [
    ("dot", "released", 0.0),
    ("gaussian", "released", 1e-4),
    ("gaussian", "released", 0.3),
    ("gaussian", "exact", 0.3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims,spatial", DIMS_SHAPES)
@pytest.mark.parametrize("use_scale", [False, True])
@pytest.mark.parametrize("kernel,rbf_norm,gamma", CGNL_CASES)
def test_cgnl_vs_reference(kernel, rbf_norm, gamma, use_scale, dims, spatial, dtype):
    block = CGNLBlock(
        8,
        4,
        groups=2,
        kernel=kernel,
        order=3,
        gamma=gamma or 1e-4,
        use_scale=use_scale,
        rbf_norm=rbf_norm,
        dims=dims,
    )
    randomize_(block, seed=3).to(dtype)
    x = rand_input((2, 8) + spatial, dtype=dtype)
    with torch.no_grad():
        out = block(x)
    if kernel == "dot":

        def f(u, w, gamma):
            return u * w
    else:
        f = (rbf_released if rbf_norm == "released" else rbf_exact)(3)
    ref = cgnl_ref(block, x, f, use_scale)
    assert out.shape == x.shape
    assert rel_err(out, ref, x) < TOL[dtype]


@pytest.mark.parametrize("rbf_norm", ["released", "exact"])
def test_cgnl_taylor_converges_to_full_kernel(rbf_norm):
    """Compact form vs the untruncated kernel over all element pairs: the error is the Taylor
    remainder, falls monotonically with ``order`` and stays under its bound."""
    gamma = 0.1
    if rbf_norm == "released":

        def full(u, w, g):
            return math.exp(-2 * g) * torch.exp(2 * g * u * w)
    else:

        def full(u, w, g):
            return torch.exp(-g * (u - w) ** 2)

    x = rand_input((2, 8, 3, 5), seed=5)
    errors = []
    for order in range(0, 9):
        block = CGNLBlock(8, 4, groups=2, order=order, gamma=gamma, rbf_norm=rbf_norm)
        randomize_(block, seed=4).double()
        with torch.no_grad():
            out = block(x)
        errors.append(rel_err(out, cgnl_ref(block, x, full, False), x))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4 * errors[0], errors
    # at the released gamma = 1e-4 the released order 3 is exact to ~1e-13
    block = randomize_(
        CGNLBlock(8, 4, groups=2, order=3, gamma=1e-4, rbf_norm=rbf_norm), seed=4
    ).double()
    with torch.no_grad():
        assert rel_err(block(x), cgnl_ref(block, x, full, False), x) < 1e-11
    # the remainder of exp(z) after order P is at most |z|^(P+1)/(P+1)! e^|z|: check order 3
    block = randomize_(
        CGNLBlock(8, 4, groups=2, order=3, gamma=gamma, rbf_norm=rbf_norm), seed=4
    ).double()
    theta = conv1x1(x, block.theta).reshape(2, 2, -1)
    phi = conv1x1(x, block.phi).reshape(2, 2, -1)
    g = conv1x1(x, block.g).reshape(2, 2, -1)
    z = 2 * gamma * theta.abs()[..., :, None] * phi.abs()[..., None, :]
    bound = (z**4 / 24 * torch.exp(z) * g.abs()[..., None, :]).sum(-1)  # per element of y
    with torch.no_grad():
        y_compact = _cgnl_y(block, x)
    y_full = _cgnl_y_ref(theta, phi, g, lambda u, w: full(u, w, gamma))
    assert ((y_compact - y_full).abs() <= bound + 1e-12).all()


def _cgnl_y(block, x):
    """The block's y (before W_z), read back through a hook on its output conv."""
    seen = {}

    def hook(module, inputs, output):
        seen["y"] = inputs[0]

    handle = block.out_proj.register_forward_hook(hook)
    block(x)
    handle.remove()
    return seen["y"].reshape(x.shape[0], block.groups, -1)


def _cgnl_y_ref(theta, phi, g, f):
    return torch.einsum("bkij,bkj->bki", f(theta[..., :, None], phi[..., None, :]), g)


# ----------------------------------------------------------------------------- APNB / AFNB
def cbr(x, m, act=True):
    """ConvNormAct: conv (no bias) -> BN (eval) -> ReLU."""
    y = bn_eval(conv1x1(x, m.conv), m.norm)
    return F.relu(y) if act else y


def asym_ref(att, x_q, x_kv, share, pool):
    """ANN Eqs. 1-5: O = softmax(theta(Xq)^T P(phi(Xkv)) / sqrt(C')) P(g(Xkv)), then W_o."""
    key_map = cbr(x_kv, att.key_proj)
    query = key_map if share == "query_key" else cbr(x_q, att.query_proj)
    key = pool(key_map)
    value = key if share == "key_value" else pool(conv1x1(x_kv, att.value_proj))
    o = nonlocal_sum(query.flatten(2), key, value, "softmax", att.key_channels**-0.5)
    return conv1x1(o.reshape(x_q.shape[0], -1, *x_q.shape[2:]), att.out_proj), key.shape[-1]


def apnb_ref(block, x, share, fusion, pool):
    x = x.double()
    o, num_anchors = asym_ref(block.attention, x, x, share, pool)
    fused = torch.cat([o, x], 1) if fusion == "concat" else x + o
    return cbr(fused, block.fuse), num_anchors


APNB_SHAPES = [
    (2, (1, 1)),
    (2, (3, 5)),
    (2, (9, 7)),
    (2, (8, 8)),
    (1, (5,)),
    (1, (13,)),
    (3, (2, 3, 4)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims,spatial", APNB_SHAPES)
@pytest.mark.parametrize("fusion", ["concat", "add"])
@pytest.mark.parametrize("share", ["query_key", "key_value", "none"])
def test_apnb_vs_reference(share, fusion, dims, spatial, dtype):
    pool_sizes = (1, 3, 6, 8) if dims == 2 else (1, 2, 3)
    block = APNB(
        6,
        5,
        key_channels=4,
        value_channels=4 if share == "key_value" else 3,
        pool_sizes=pool_sizes,
        share=share,
        fusion=fusion,
        dims=dims,
    )
    randomize_(block, seed=7).to(dtype)
    x = rand_input((2, 6) + spatial, dtype=dtype)
    with torch.no_grad():
        out = block(x)
    ref, num_anchors = apnb_ref(block, x, share, fusion, lambda t: pyramid_ref(t, pool_sizes))
    if dims == 2:
        assert num_anchors == 110 == block.attention.sampler.num_anchors(spatial)
    assert out.shape == (2, 5) + spatial
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("low,high", [((7, 9), (3, 5)), ((1, 1), (2, 2)), ((8, 8), (8, 8))])
@pytest.mark.parametrize("fusion", ["concat", "add"])
@pytest.mark.parametrize("share", ["none", "key_value"])
def test_afnb_vs_reference(share, fusion, low, high, dtype):
    block = AFNB(
        5,
        6,
        7,
        key_channels=4,
        value_channels=4 if share == "key_value" else 3,
        share=share,
        fusion=fusion,
    )
    randomize_(block, seed=8).to(dtype)
    x_low, x_high = rand_input((2, 5) + low, 2, dtype), rand_input((2, 6) + high, 3, dtype)
    with torch.no_grad():
        out = block(x_low, x_high)
    o, num_anchors = asym_ref(
        block.attention,
        x_high.double(),
        x_low.double(),
        share,
        lambda t: pyramid_ref(t, (1, 3, 6, 8)),
    )
    fused = torch.cat([o, x_high.double()], 1) if fusion == "concat" else x_high.double() + o
    ref = cbr(fused, block.fuse, act=False)
    assert num_anchors == 110
    assert out.shape == (2, 7) + high
    assert rel_err(out, ref) < TOL[dtype]
