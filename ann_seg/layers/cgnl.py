"""Compact Generalized Non-local block (Yue, Sun, Li, Lin, Ding; NeurIPS 2018).

The generalized non-local operation attends between every (channel, position) *element* of a
channel group, not only between positions. With the elements of group ``k`` flattened into
vectors ``t = theta(x)_k``, ``p = phi(x)_k``, ``v = g(x)_k`` of length ``M = C'/G * N``:

    y_e = sum_{e'} f(t_e, p_{e'}) v_{e'}                                    (CGNL, Eq. 3)

Compact forms (``kernel``), linear in ``M`` because the kernel factorises:

* ``'dot'``: ``f(u, w) = u w``, so ``y = t * sum(p * v)``.
* ``'gaussian'`` (RBF): ``f(u, w) = exp(-gamma (u - w)^2)
  = exp(-gamma u^2) exp(-gamma w^2) exp(2 gamma u w)``; ``exp(2 gamma u w)`` is Taylor-expanded
  to ``order`` P (Eq. 5):

      y = beta * sum_{p=0..P} alpha_p t^p * sum(p^p * v),      alpha_p = (2 gamma)^p / p!

  The released code (KaiyuYue/cgnl-network.pytorch, ``SpatialCGNLx``) replaces the factor
  ``exp(-gamma u^2) exp(-gamma w^2)`` by the constant ``beta = exp(-2 gamma)`` (its comment:
  the exact factor made training hard); ``rbf_norm='released'`` (default) follows it, so
  ``f(u, w) ~ exp(-2 gamma) exp(2 gamma u w)``. ``rbf_norm='exact'`` keeps the element-wise
  factors, ``beta -> exp(-gamma t^2)`` outside and ``v -> exp(-gamma p^2) v`` inside the sum, so
  ``f`` approximates the true RBF kernel.

``use_scale`` divides ``sum(...)`` by ``sqrt(M)`` (released: ``sqrt(c * h * w)`` with ``c`` the
group's channels). Then ``z = x + GroupNorm_G(W_z y)`` with ``W_z`` a grouped 1x1 conv (G
groups, no bias).
"""

import math
from typing import Optional

import torch
import torch.nn as nn

from .asymmetric import check_channels
from .attention import in_float32
from .conv import NormArg, check_choice, check_dims, check_positive, conv_nd, resolve_norm_layer

KERNELS = ("gaussian", "dot")
RBF_NORMS = ("released", "exact")


def cgnl_kernel(
    t: torch.Tensor,
    p: torch.Tensor,
    v: torch.Tensor,
    kernel: str = "gaussian",
    order: int = 3,
    gamma: float = 1e-4,
    use_scale: bool = False,
    rbf_norm: str = "released",
) -> torch.Tensor:
    """Compact generalized non-local response over the last dim (the ``M`` elements of a group).

    ``t``, ``p``, ``v``: ``(..., M)`` -> ``(..., M)``. Cost O(P M) instead of O(M^2).
    """
    norm = math.sqrt(t.shape[-1]) if use_scale else 1.0
    if kernel == "dot":
        return t * ((p * v).sum(-1, keepdim=True) / norm)
    if rbf_norm == "exact":
        v = v * torch.exp(-gamma * p * p)
        beta = torch.exp(-gamma * t * t)
    else:
        beta = math.exp(-2.0 * gamma)
    out = t_pow = p_pow_v = None
    for k in range(order + 1):
        if k == 0:
            t_pow, p_pow_v = torch.ones_like(t), v
        else:
            t_pow, p_pow_v = t_pow * t, p_pow_v * p
        alpha = (2.0 * gamma) ** k / math.factorial(k)
        term = t_pow * (alpha * p_pow_v.sum(-1, keepdim=True) / norm)
        out = term if out is None else out + term
    return beta * out


class CGNLBlock(nn.Module):
    """Compact Generalized Non-local block ``z = x + GN(W_z y)`` (see the module docstring).

    Args:
        in_channels: channels ``C`` of ``x``.
        inter_channels: channels ``C'`` of theta, phi, g (1x1 convs without bias); ``None`` is
            ``C // 2`` as released.
        groups: channel groups ``G`` (8 in the released models); must divide ``C`` and ``C'``.
        kernel: ``'gaussian'`` (RBF, Taylor-expanded; ``SpatialCGNLx``) or ``'dot'``
            (``SpatialCGNL``).
        order: Taylor order ``P`` of the Gaussian kernel (3 released).
        gamma: RBF ``gamma`` (1e-4 released).
        use_scale: divide by ``sqrt(C'/G * N)`` (False released).
        rbf_norm: ``'released'`` (``beta = exp(-2 gamma)``) or ``'exact'`` (see above).
        norm_layer: the norm after ``W_z``: ``'gn'`` (``GroupNorm(groups)``, the paper's and
            the default), or as every block's ``norm_layer`` (``'bn'``, ``C -> nn.Module``;
            ``None`` is refused: the zero-initialised norm makes a fresh block the identity).
        dims: 1, 2 or 3 spatial dims.

    Initialisation: the norm's weight and bias are zero (as the released ResNet init), so
    a fresh block is exactly the identity in train and eval mode.

    With ``kernel='dot'`` each group of ``y`` is ``t`` times one scalar, which the GroupNorm
    (same groups as ``W_z``) removes up to its sign and eps, as in the released design.
    The kernel runs in float32 under autocast (powers and sums over ``M`` elements).
    Shape: ``(B, C, *spatial) -> (B, C, *spatial)``.
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: Optional[int] = None,
        groups: int = 8,
        kernel: str = "gaussian",
        order: int = 3,
        gamma: float = 1e-4,
        use_scale: bool = False,
        rbf_norm: str = "released",
        norm_layer: NormArg = "gn",
        dims: int = 2,
    ):
        super().__init__()
        inter_channels = in_channels // 2 if inter_channels is None else inter_channels
        check_positive(in_channels=in_channels, inter_channels=inter_channels, groups=groups)
        if in_channels % groups or inter_channels % groups:
            raise ValueError(
                f"groups must divide in_channels and inter_channels, got groups="
                f"{groups}, in_channels={in_channels}, "
                f"inter_channels={inter_channels}"
            )
        check_choice("kernel", kernel, KERNELS)
        check_choice("rbf_norm", rbf_norm, RBF_NORMS)
        if not isinstance(order, int) or isinstance(order, bool) or order < 0:
            raise ValueError(f"order must be a non-negative int, got {order!r}")
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        self.dims = check_dims(dims)
        self.in_channels = in_channels
        self.inter_channels = inter_channels
        self.groups = groups
        self.kernel = kernel
        self.order = order
        self.gamma = float(gamma)
        self.use_scale = use_scale
        self.rbf_norm = rbf_norm
        conv = conv_nd(dims)
        self.theta = conv(in_channels, inter_channels, 1, bias=False)
        self.phi = conv(in_channels, inter_channels, 1, bias=False)
        self.g = conv(in_channels, inter_channels, 1, bias=False)
        self.out_proj = conv(inter_channels, in_channels, 1, groups=groups, bias=False)
        if norm_layer == "gn":
            self.norm = nn.GroupNorm(groups, in_channels)
        else:
            norm_layer = resolve_norm_layer(norm_layer, dims)
            self.norm = None if norm_layer is None else norm_layer(in_channels)
        if getattr(self.norm, "weight", None) is None:
            raise ValueError(
                f"CGNLBlock: norm_layer must build an affine norm (zero-initialised "
                f"so that a fresh block is the identity), got {norm_layer!r}"
            )
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels("input", x, self.in_channels, self.dims, type(self).__name__)
        batch, spatial = x.shape[0], x.shape[2:]
        # group k holds channels [k C'/G, (k + 1) C'/G): a view to (B, G, C'/G * N)
        # (lists, not generators, are unpacked: torch 2.1's dynamo cannot unpack generators)
        t, p, v = [m(x).reshape(batch, self.groups, -1) for m in (self.theta, self.phi, self.g)]
        options = (self.kernel, self.order, self.gamma, self.use_scale, self.rbf_norm)
        y = in_float32(lambda t, p, v: cgnl_kernel(t, p, v, *options), t, p, v)
        y = y.reshape(batch, self.inter_channels, *spatial)
        return self.norm(self.out_proj(y)) + x

    def extra_repr(self) -> str:
        return (
            f"groups={self.groups}, kernel={self.kernel!r}, order={self.order}, "
            f"gamma={self.gamma}, use_scale={self.use_scale}, rbf_norm={self.rbf_norm!r}, "
            f"dims={self.dims}"
        )
