"""Key/value samplers: choose the S "anchor" positions that keys and values are taken from.

Every sampler maps ``(B, C, *spatial)`` to ``(B, C, S)``. ``linear`` samplers commute with a
1x1 convolution, so a linear projection may be applied before or after them with the same result.

``PyramidPoolingSampler`` pools by a matmul with the exact adaptive-pooling matrix, cached per
input shape; while tracing (``torch.onnx.export(dynamo=False)``, ``torch.export``,
``torch.compile``) the matrix is built from the traced shape, so exported graphs pool exactly at
any input size.
"""

import math
from typing import Sequence, Tuple, Union

import torch
import torch.nn as nn

from .compat import is_tracing
from .conv import check_positive, max_pool_nd

PoolSize = Union[int, Tuple[int, ...]]


def _adaptive_pool_matrix_1d(length, bins: int) -> torch.Tensor:
    """``(bins, length)`` adaptive average pooling with PyTorch's bin rule: bin ``i`` averages
    ``[floor(i L / n), ceil((i + 1) L / n))``. Torch ops only, so ``length`` may be a traced
    size (a 0-dim tensor under TorchScript tracing, a SymInt under ``torch.export``)."""
    i = torch.arange(bins, dtype=torch.int64)
    start = (i * length) // bins
    end = ((i + 1) * length + (bins - 1)) // bins  # ceil(a / n) = floor((a + n - 1) / n)
    j = torch.arange(length, dtype=torch.int64)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return inside.to(torch.float64) / (end - start).to(torch.float64)[:, None]


def adaptive_pool_matrix(
    spatial: Sequence[int], bins: Sequence[int], dtype=torch.float32, device=None
) -> torch.Tensor:
    """Matrix ``(prod(bins), prod(spatial))`` so that ``x.flatten(2) @ M.T`` equals
    ``adaptive_avg_poolNd(x, bins).flatten(2)``: adaptive average pooling is separable, so the
    N-d matrix is the Kronecker product of the 1-d ones (spelled as a broadcast product, which
    traces). Works for any sizes, including bins larger than the input (bins then repeat input
    cells, as PyTorch does), and for traced sizes in ``spatial``."""
    matrix, rows = None, 1
    for length, n in zip(spatial, bins):
        m = _adaptive_pool_matrix_1d(length, int(n))
        rows *= int(n)
        if matrix is None:
            matrix = m
        else:
            matrix = (matrix[:, None, :, None] * m[None, :, None, :]).reshape(rows, -1)
    return matrix.to(dtype=dtype, device=device)


class IdentitySampler(nn.Module):
    """Every position is an anchor: ``S = N`` (the full non-local block)."""

    linear = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2)

    def num_anchors(self, spatial: Sequence[int]) -> int:
        return math.prod(spatial)


class PyramidPoolingSampler(nn.Module):
    """Anchors from adaptive average pooling to each size in ``pool_sizes`` (ANN, Eq. 5).

    ``pool_sizes=(1, 3, 6, 8)`` on 2-d input gives ``S = 1 + 9 + 36 + 64 = 110`` anchors
    whatever the input size. An int size pools every spatial dim to it; a tuple gives one size
    per dim. Pooling is one matmul (see the module docstring): no adaptive pooling op for ONNX.
    """

    linear = True

    def __init__(self, pool_sizes: Sequence[PoolSize] = (1, 3, 6, 8)):
        super().__init__()
        if isinstance(pool_sizes, int) or not len(pool_sizes):
            raise ValueError(f"pool_sizes must be a non-empty sequence, got {pool_sizes!r}")
        for size in pool_sizes:
            for s in size if isinstance(size, tuple) else (size,):
                if not isinstance(s, int) or isinstance(s, bool) or s <= 0:
                    raise ValueError(f"each pool size must be a positive int, got {s!r}")
        self.pool_sizes = tuple(pool_sizes)
        self._cache = {}

    def level_bins(self, dims: int):
        """The bins of each pyramid level for ``dims``-d input (an int size on every dim)."""
        for size in self.pool_sizes:
            bins = size if isinstance(size, tuple) else (size,) * dims
            if len(bins) != dims:
                raise ValueError(f"pool size {size} does not match {dims}-d input")
            yield bins

    def num_anchors(self, spatial: Sequence[int]) -> int:
        return sum(math.prod(bins) for bins in self.level_bins(len(spatial)))

    def pooling_matrix(self, spatial: Sequence[int], dtype, device) -> torch.Tensor:
        """``(S, N)`` matrix of all pyramid levels stacked (cached per shape/dtype/device)."""
        key = (tuple(int(s) for s in spatial), dtype, str(device))
        if key not in self._cache:
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = self.traceable_pooling_matrix(key[0], dtype, device)
        return self._cache[key]

    def traceable_pooling_matrix(self, spatial: Sequence, dtype, device) -> torch.Tensor:
        """``pooling_matrix`` built from (possibly traced) sizes, uncached."""
        levels = [
            adaptive_pool_matrix(spatial, bins, torch.float64)
            for bins in self.level_bins(len(spatial))
        ]
        return torch.cat(levels).to(dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_tracing():  # a cached matrix would be a constant of one input size in the graph
            matrix = self.traceable_pooling_matrix(x.shape[2:], x.dtype, x.device)
        else:
            matrix = self.pooling_matrix(x.shape[2:], x.dtype, x.device)
        flat = x.flatten(2)
        if not flat.is_contiguous() and flat.transpose(1, 2).is_contiguous():
            # channels-last: pool the (B, N, C) token matrix where it lies (no copy of x; a
            # (B, C, N) view would be copied to fold its batch); the result is the same
            # (B, C, S) values, as a view of a (B, S, C) tensor (the layout attention reads)
            return torch.matmul(matrix, flat.transpose(1, 2)).transpose(1, 2)
        return torch.matmul(flat, matrix.t())

    def extra_repr(self) -> str:
        return f"pool_sizes={self.pool_sizes}"


class MaxPoolSampler(nn.Module):
    """Anchors from max pooling with ``kernel_size`` and equal stride (Non-local, Sec. 3.3):
    ``S ~ N / kernel_size**dims``. Dims smaller than the kernel are pooled whole."""

    linear = False

    def __init__(self, kernel_size: int = 2):
        super().__init__()
        check_positive(kernel_size=kernel_size)
        self.kernel_size = kernel_size

    def _kernel(self, spatial: Sequence[int]):
        return tuple(min(self.kernel_size, int(s)) for s in spatial)

    def num_anchors(self, spatial: Sequence[int]) -> int:
        return math.prod(-(-int(s) // k) for s, k in zip(spatial, self._kernel(spatial)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._kernel(x.shape[2:])
        pooled = max_pool_nd(x.dim() - 2)(x, kernel, kernel, ceil_mode=True)
        return pooled.flatten(2)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


def build_sampler(sampler) -> nn.Module:
    """``None``/``'identity'``, ``'pyramid'``, ``'maxpool'``, a dict such as
    ``dict(type='pyramid', pool_sizes=(1, 3, 6, 8))``, or a module."""
    if isinstance(sampler, nn.Module):
        return sampler
    kinds = dict(identity=IdentitySampler, pyramid=PyramidPoolingSampler, maxpool=MaxPoolSampler)
    if sampler is None:
        return IdentitySampler()
    if isinstance(sampler, str):
        sampler = {"type": sampler}
    if not isinstance(sampler, dict) or sampler.get("type") not in kinds:
        raise ValueError(
            f'sampler must be one of {sorted(kinds)}, a dict with such a "type", '
            f"or an nn.Module; got {sampler!r}"
        )
    args = dict(sampler)
    return kinds[args.pop("type")](**args)
