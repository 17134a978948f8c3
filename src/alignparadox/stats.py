"""Intervals for every rate and correlation this project reports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
    # Why rho is not computed, when a report knows better than n (keyword-only, so subclasses
    # keep their positional fields).
    note: str | None = field(default=None, kw_only=True)

    def as_dict(self) -> dict:
        return {"rho": self.rho, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        if self.note:
            return self.note
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


@dataclass(frozen=True)
class PooledCorrelation(Correlation):
    """Spearman's rho pooled over strata (alignment axes), with a cluster-bootstrap interval.

    `rho` is the mean of the per-stratum rhos weighted by their numbers of points; `resampled`
    says what the bootstrap drew first: "families" (clusters, e.g. the seeds of an axis) where
    a stratum has two or more, else "targets" (single points)."""

    strata: int = 1
    resampled: str = "targets"


def pooled_spearman(x, y, clusters, strata, *, resamples: int = 2000,
                    seed: int = 0) -> PooledCorrelation:
    """Spearman's rho of x and y within each stratum, pooled, with a 95% interval from a
    stratified two-stage cluster bootstrap: each draw resamples, within every stratum, its
    clusters with replacement and then the points of each drawn cluster (so both the spread
    between seeds and the noise within a family widen the interval; a stratum of one cluster
    is an ordinary bootstrap over its points), and pools the strata's rhos as the point
    estimate does. Strata with fewer than three points, or with no
    variation, are left out; a draw whose ranks are constant in a stratum drops that stratum."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    groups: list[list[np.ndarray]] = []  # per usable stratum, the point indices of each cluster
    whole: list[np.ndarray] = []
    for stratum in dict.fromkeys(strata):
        members = np.array([i for i, s in enumerate(strata) if s == stratum])
        if len(members) < 3 or np.ptp(x[members]) == 0 or np.ptp(y[members]) == 0:
            continue
        names = dict.fromkeys(clusters[i] for i in members)
        if len(names) >= 2:
            groups.append([np.array([i for i in members if clusters[i] == name])
                           for name in names])
        else:
            groups.append([np.array([i]) for i in members])
        whole.append(members)
    n = int(sum(len(m) for m in whole))
    by_family = any(len(g) < len(m) for g, m in zip(groups, whole, strict=True))
    resampled = "families" if by_family else "targets"
    if not whole:
        nan = float("nan")
        return PooledCorrelation(nan, nan, nan, len(x), 0, resampled)

    rng = np.random.default_rng(seed)
    rhos = np.full((len(groups), resamples + 1), np.nan)  # column 0: the observed points
    sizes = np.zeros_like(rhos)
    for g, (group, members) in enumerate(zip(groups, whole, strict=True)):
        rhos[g, 0] = _spearman_rows(x[members][None], y[members][None])[0]
        sizes[g, 0] = len(members)
        for rows, length, draws in _cluster_draws(group, resamples, rng):
            sizes[g, 1 + rows] = length
            rhos[g, 1 + rows] = _spearman_rows(x[draws], y[draws])
    weights = np.where(np.isnan(rhos), 0, sizes)
    total = weights.sum(0)
    pooled = (np.nan_to_num(rhos) * weights).sum(0) / np.where(total > 0, total, 1)
    rho = float(pooled[0])  # every kept stratum varies, so the observed points have a rho
    draws = pooled[1:][total[1:] > 0]
    low, high = (np.percentile(draws, [2.5, 97.5]) if len(draws) else (float("nan"),) * 2)
    return PooledCorrelation(rho, float(low), float(high), n, len(whole), resampled)


def _cluster_draws(group: list[np.ndarray], resamples: int, rng: np.random.Generator):
    """The two-stage draws of one stratum, all at once: each resample draws its clusters with
    replacement, then the points of each drawn cluster with replacement. Yields (resample
    indices, length, their point indices as a (rows, length) array) per draw length, since
    clusters of different sizes make draws of different lengths."""
    sizes = np.array([len(cluster) for cluster in group])
    table = np.zeros((len(group), sizes.max()), dtype=int)  # the clusters' points, padded
    for j, cluster in enumerate(group):
        table[j, :len(cluster)] = cluster
    chosen = rng.integers(0, len(group), (resamples, len(group)))
    chosen_sizes = sizes[chosen][..., None]
    within = rng.integers(0, chosen_sizes, (resamples, len(group), table.shape[1]))
    drawn = np.arange(table.shape[1]) < chosen_sizes  # a cluster's own number of points
    points = table[chosen[..., None], within]
    lengths = drawn.sum((1, 2))
    for length in np.unique(lengths):  # draws of one length are ranked together
        rows = np.flatnonzero(lengths == length)
        yield rows, length, points[rows][drawn[rows]].reshape(len(rows), length)


def _spearman_rows(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair (average ranks for ties); NaN where a row is constant."""
    from scipy import stats as scipy_stats

    rx = scipy_stats.rankdata(xs, axis=1)
    ry = scipy_stats.rankdata(ys, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    scale = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, (rx * ry).sum(1) / np.where(scale > 0, scale, 1), np.nan)
