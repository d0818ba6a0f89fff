"""Statistics of the head study: confidence intervals over seeds and Pareto fronts."""

import math
from typing import List, Sequence, Tuple

from scipy import stats as scipy_stats


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float, float]:
    """``(mean, low, high)``: Student's t confidence interval of the mean of ``values``.

    ``mean +- t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (``n - 1`` in the denominator). Seeds are few (5), so the t quantile, not the normal
    one (1.96), and not a bootstrap, whose percentiles from 5 values are coarse. With one value
    the bounds are NaN.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    n = len(values)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * math.sqrt(variance / n)
    return mean, mean - half, mean + half


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point beats: lower or equal cost (x) and higher or equal
    score (y), one of them strictly. Sorted by cost."""
    front = []
    for i, (cost, score) in enumerate(points):
        dominated = any(
            (c <= cost and s >= score) and (c < cost or s > score)
            for j, (c, s) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])
