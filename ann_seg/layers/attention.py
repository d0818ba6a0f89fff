"""The attention core shared by every block of the family.

``attend(query, key, value, pairwise=...)`` computes, for queries ``q_i`` (``N`` of them) and
anchors ``k_j, v_j`` (``S`` of them), the non-local response (Wang et al. 2018, Eq. 1)

    y_i = 1 / C(q) * sum_j f(q_i, k_j) v_j

with the pairwise function ``f`` and normaliser ``C``:

========== ================================ ========== ==========================================
pairwise   f(q_i, k_j)                      C          how it is computed
========== ================================ ========== ==========================================
softmax    exp(scale * q_i . k_j)           sum_j f    ``scaled_dot_product_attention`` (no N x S
                                                       matrix kept), in the autocast or input
                                                       dtype: its kernels accumulate in float32
dot        q_i . k_j                        S          ``q (k^T v) / S``: O((N + S) C^2), no N x S
concat     ReLU(q_i + k_j), q, k scalars    S          sort + suffix sums: O((N + S) log S C),
                                                       exact, no N x S matrix
========== ================================ ========== ==========================================

``dot`` and ``concat`` compute in float32 (half-precision sums over ``S`` overflow); every form
returns the autocast dtype under autocast, else the input's. Gaussian and embedded Gaussian
are both ``softmax``; they differ in the block's projections. ``backend='explicit'`` forms the
``N x S`` matrix with plain matmuls (the reference; concat chunked over queries).
Shapes: ``query (B, N, Ck)``, ``key (B, S, Ck)``, ``value (B, S, Cv)`` -> ``(B, N, Cv)``.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from .compat import SDPA_EXPORTS_TO_ONNX, output_dtype
from .conv import check_choice

PAIRWISE = ("softmax", "dot", "concat")
BACKENDS = ("auto", "sdpa", "explicit")
_CONCAT_CHUNK_ELEMENTS = 1 << 24


def _check(query, key, value, pairwise, backend):
    check_choice("pairwise", pairwise, PAIRWISE)
    check_choice("backend", backend, BACKENDS)
    shapes = f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError(f"query, key and value must be (B, N, C) tensors, got {shapes}")
    if key.shape[:2] != value.shape[:2] or query.shape[::2] != key.shape[::2]:
        raise ValueError(f"incompatible shapes: {shapes}")
    if pairwise == "concat" and query.shape[2] != 1:
        raise ValueError(
            "concat pairwise expects scalar query/key terms (C = 1): the block "
            f"applies w_f to theta and phi; got C = {query.shape[2]}"
        )


def in_float32(function, *tensors, **kwargs) -> torch.Tensor:
    """``function(*tensors, **kwargs)`` with autocast off and half-precision tensors upcast to
    float32; the result in the dtype an op on the last tensor returns (``output_dtype``)."""
    out_dtype = output_dtype(tensors[-1])
    with torch.autocast(tensors[-1].device.type, enabled=False):
        upcast = [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors]
        return function(*upcast, **kwargs).to(out_dtype)


def _explicit_softmax(query, key, value, scale: float) -> torch.Tensor:
    weights = torch.softmax(torch.bmm(query, key.transpose(1, 2)) * scale, dim=-1)
    return torch.bmm(weights, value)


def softmax_attention(
    query, key, value, scale: Optional[float] = None, backend: str = "auto"
) -> torch.Tensor:
    """``softmax(scale * q k^T) v``; ``scale=None`` means ``Ck ** -0.5``. Through SDPA in the
    autocast (or input) dtype; the explicit form (and the ONNX trace below torch 2.5) in
    float32, since its half-precision ``N x S`` logits overflow (pytorch #40497)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if backend == "explicit" or (torch.jit.is_tracing() and not SDPA_EXPORTS_TO_ONNX):
        return in_float32(_explicit_softmax, query, key, value, scale=scale)
    # the fused (flash) CPU kernel needs contiguous inputs; on strided views (our
    # (B, C, N) -> (B, N, C) transposes) SDPA silently falls back to the math kernel, which
    # materialises the N x S matrix
    out_dtype = output_dtype(value)
    q, k, v = (t.to(out_dtype).contiguous()[:, None] for t in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v, scale=scale)[:, 0]


def dot_attention(query, key, value, backend: str = "auto") -> torch.Tensor:
    """``(q k^T) v / S``; associativity gives ``q (k^T v) / S`` without the N x S matrix."""
    num_anchors = key.shape[1]
    n, c_k, c_v = query.shape[1], query.shape[2], value.shape[2]
    explicit_cost = n * num_anchors * (c_k + c_v)
    factored_cost = c_k * c_v * (n + num_anchors)
    if backend == "explicit" or (backend == "auto" and explicit_cost < factored_cost):
        return torch.bmm(torch.bmm(query, key.transpose(1, 2)), value) / num_anchors
    return torch.bmm(query, torch.bmm(key.transpose(1, 2), value)) / num_anchors


def concat_attention(query, key, value, backend: str = "auto") -> torch.Tensor:
    """``sum_j ReLU(a_i + b_j) v_j / S`` for scalars ``a = query``, ``b = key``.

    ``ReLU(a_i + b_j)`` is nonzero exactly for ``b_j > -a_i``; with ``b`` sorted, those ``j`` form
    a suffix, so ``y_i = (a_i * sum_suffix v + sum_suffix b v) / S``: one sort, two suffix sums
    and a binary search per query. Exact, differentiable, memory O((N + S) Cv).
    """
    num_anchors = key.shape[1]
    if backend == "explicit":
        chunk = max(1, _CONCAT_CHUNK_ELEMENTS // max(1, num_anchors * query.shape[0]))
        outs = [
            torch.bmm(F.relu(q + key.transpose(1, 2)), value) for q in query.split(chunk, dim=1)
        ]
        return torch.cat(outs, dim=1) / num_anchors
    b_sorted, order = key[..., 0].sort(dim=1)
    v_sorted = value.gather(1, order[..., None].expand_as(value))
    zeros = value.new_zeros(value.shape[0], 1, value.shape[2])
    # suffix[:, k] = sum over j >= k; a trailing zero row handles "no j qualifies"
    suffix_v = torch.cat([v_sorted.flip(1).cumsum(1).flip(1), zeros], 1)
    suffix_bv = torch.cat([(b_sorted[..., None] * v_sorted).flip(1).cumsum(1).flip(1), zeros], 1)
    first = torch.searchsorted(b_sorted.contiguous(), (-query[..., 0]).contiguous(), right=True)
    index = first[..., None].expand(-1, -1, value.shape[2])
    out = query * suffix_v.gather(1, index) + suffix_bv.gather(1, index)
    return out / num_anchors


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pairwise: str = "softmax",
    scale: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Non-local response ``(B, N, Cv)``; see the module docstring for the three forms.

    Args:
        query: ``(B, N, Ck)`` (``Ck = 1`` for ``concat``).
        key: ``(B, S, Ck)``.
        value: ``(B, S, Cv)``.
        pairwise: ``'softmax'``, ``'dot'`` or ``'concat'``.
        scale: logit scale for ``softmax``; ``None`` is ``Ck ** -0.5``, ``1.0`` is the paper's
            unscaled Gaussian.
        backend: ``'auto'`` (the memory-light form), ``'sdpa'`` or ``'explicit'`` (N x S matrix).
    """
    _check(query, key, value, pairwise, backend)
    if pairwise == "softmax":
        return softmax_attention(query, key, value, scale, backend)
    # float32 inside autocast: half-precision sums over S overflow (fp16)
    form = dot_attention if pairwise == "dot" else concat_attention
    return in_float32(form, query, key, value, backend=backend)
