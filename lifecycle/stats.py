"""Small-sample statistics for pass rates: is a drop beyond chance?

A golden set holds tens of cases, so a pass rate moves by several points when two or three
near ties flip. The gate shows, next to each rate change, the Wilson score interval of
both rates and the exact McNemar test over the paired flips (the same cases judged twice),
so a reader sees whether the change could be chance. Pure functions, no dependencies.
"""

from __future__ import annotations

import math

# Two-sided 95 % normal quantile.
Z_95 = 1.959963984540054


def wilson_interval(passed: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of ``passed / total`` (0..1 both ends; (0, 1) for no cases)."""
    if total <= 0:
        return 0.0, 1.0
    p = passed / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value for ``lost`` pass→fail and ``gained`` fail→pass flips.

    Under "no change" each flip is equally likely to go either way, so the smaller count is
    binomial(lost + gained, 1/2); 1.0 when nothing flipped.
    """
    n = lost + gained
    if n == 0:
        return 1.0
    k = min(lost, gained)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)
