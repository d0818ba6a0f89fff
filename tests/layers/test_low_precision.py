"""Low precision (the speed policy's bf16/fp16): every block under autocast against its float64
self, and no inf/NaN forward or backward when the attention logits are large.

The cast-weights path (what inference runs) is checked against the papers' float64 references
in test_blocks_reference.py (its DTYPES include bfloat16 and float16).
"""

import pytest
import torch

from ann_seg.layers import AFNB, APNB, CGNLBlock, NonLocalBlock, attend

LOW = [torch.bfloat16, torch.float16]
AUTOCAST_TOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3}


def randomized(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return module


def blocks(gamma=1e-2):
    """(name, block, inputs) of every block of the family, 2-d, small and odd sizes; CGNL's
    RBF ``gamma`` (1e-4 released) large enough here that its Taylor terms count."""
    x = torch.randn(2, 8, 7, 9, generator=torch.Generator().manual_seed(1))
    low = torch.randn(2, 6, 9, 11, generator=torch.Generator().manual_seed(2))
    return [
        ("nl_softmax", NonLocalBlock(8, 4, mode="embedded_gaussian"), (x,)),
        ("nl_dot", NonLocalBlock(8, 4, mode="dot_product"), (x,)),
        ("nl_concat", NonLocalBlock(8, 4, mode="concatenation"), (x,)),
        ("cgnl", CGNLBlock(8, 4, groups=2, kernel="gaussian", gamma=gamma), (x,)),
        ("apnb", APNB(8, 8, key_channels=4, value_channels=4), (x,)),
        ("afnb", AFNB(6, 8, 8, key_channels=4, value_channels=4), (low, x)),
    ]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("index", range(6))
def test_blocks_under_autocast_match_float64(index, dtype, single_thread):
    name, block, inputs = blocks()[index]
    block = randomized(block, index).eval()
    with torch.no_grad():
        reference = block.double()(*(t.double() for t in inputs))
        block.float()
        with torch.autocast("cpu", dtype=dtype):
            out = block(*inputs)
    residual = inputs[-1].double() if name.startswith(("nl", "cgnl")) else 0
    error = (out.double() - reference).norm() / (reference - residual).norm()
    assert torch.isfinite(out).all() and error < AUTOCAST_TOL[dtype], (name, error.item())


def _amplify_logits(block, factor):
    """Scale the query/key projections so that the pairwise logits grow by ``factor``**2."""
    with torch.no_grad():
        for name, param in block.named_parameters():
            if any(k in name for k in ("theta", "phi", "query_proj", "key_proj")):
                param.mul_(factor)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("index", range(6))
def test_large_logits_stay_finite_forward_and_backward(index, dtype, single_thread):
    """Logits hundreds of times their usual size: the softmax forms go through SDPA (float32
    accumulators, normalised output); the unnormalised ones (dot, concat, CGNL's Taylor sums)
    accumulate in float32. Their output grows with the logits themselves, so they are
    amplified less, and CGNL has the released gamma: beyond float16's range the result itself
    (not the sum) cannot be held."""
    name, block, inputs = blocks(gamma=1e-4)[index]
    block = randomized(block, index).train()
    _amplify_logits(block, 30.0 if name in ("nl_softmax", "apnb", "afnb") else 6.0)
    inputs = [(t * 4).requires_grad_() for t in inputs]
    with torch.autocast("cpu", dtype=dtype):
        out = block(*inputs)
    loss = out.float().square().mean()
    loss.backward()
    grads = [t.grad for t in inputs] + [p.grad for p in block.parameters() if p.grad is not None]
    assert torch.isfinite(out).all() and torch.isfinite(loss), name
    assert all(torch.isfinite(g).all() for g in grads), name
    assert any(g.abs().sum() > 0 for g in grads), name


@pytest.mark.parametrize("dtype", LOW)
def test_attention_sums_beyond_the_half_range_do_not_overflow(dtype, single_thread):
    """``sum_j k_j v_j`` over 110 anchors of size 30 is about 10^5, beyond float16's 65504:
    the dot form keeps float32 accumulation and returns a finite low-precision result."""
    gen = torch.Generator().manual_seed(0)
    q = torch.rand(1, 50, 8, generator=gen).to(dtype)
    k = (30 + torch.rand(1, 110, 8, generator=gen)).to(dtype)
    v = (30 + torch.rand(1, 110, 8, generator=gen)).to(dtype)
    for pairwise in ("dot", "softmax"):
        out = attend(q, k, v, pairwise=pairwise)
        reference = attend(q.double(), k.double(), v.double(), pairwise=pairwise)
        assert out.dtype == dtype and torch.isfinite(out).all(), pairwise
        assert torch.allclose(out.double(), reference, rtol=2e-2), pairwise
