"""Intervals for every rate and correlation this project reports."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """A proportion with the count behind it and its Wilson 95% interval."""

    successes: int
    total: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.successes / self.total if self.total else float("nan")

    def as_dict(self) -> dict:
        return {"k": self.successes, "n": self.total, "rate": self.value, "low": self.low,
                "high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}] ({self.successes}/{self.total})"


def wilson(successes: int, total: int) -> Rate:
    """Wilson score interval at 95%; (0, 1) when there is no data."""
    if total <= 0:
        return Rate(0, 0, 0.0, 1.0)
    p = successes / total
    denominator = 1 + _Z95**2 / total
    centre = (p + _Z95**2 / (2 * total)) / denominator
    half = _Z95 * math.sqrt(p * (1 - p) / total + _Z95**2 / (4 * total**2)) / denominator
    # The interval always holds p itself (at k = 0 or k = n rounding would leave it out).
    return Rate(successes, total, min(p, max(0.0, centre - half)),
                max(p, min(1.0, centre + half)))


@dataclass(frozen=True)
class Correlation:
    """Spearman rank correlation with a percentile-bootstrap 95% interval."""

    rho: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"rho": self.rho, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        if self.n < 3:
            return f"n={self.n}: too few targets"
        if math.isnan(self.rho):
            return f"n={self.n}: undefined, a value does not vary"
        return f"{self.rho:+.2f} [{self.low:+.2f}, {self.high:+.2f}] (n={self.n})"


def spearman_bootstrap(x, y, *, resamples: int = 2000, seed: int = 0) -> Correlation:
    """Spearman's rho of paired values and a bootstrap 95% interval over the pairs.

    Resamples whose ranks are constant (rho undefined) are skipped; with fewer than three
    pairs, or no variation, rho is NaN and so is the interval. All resamples are ranked and
    correlated at once (Spearman's rho = Pearson's r of average ranks).
    """
    from scipy import stats as scipy_stats  # here, not at the top: keeps `paradox --help` fast

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(float("nan"), float("nan"), float("nan"), n)
    rho = float(scipy_stats.spearmanr(x, y).statistic)
    index = np.random.default_rng(seed).integers(0, n, (resamples, n))
    xs, ys = x[index], y[index]
    varies = (np.ptp(xs, axis=1) > 0) & (np.ptp(ys, axis=1) > 0)
    if not varies.any():
        return Correlation(rho, float("nan"), float("nan"), n)
    rx = scipy_stats.rankdata(xs[varies], axis=1)
    ry = scipy_stats.rankdata(ys[varies], axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    draws = (rx * ry).sum(1) / np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    low, high = np.percentile(draws, [2.5, 97.5])
    return Correlation(rho, float(low), float(high), n)
