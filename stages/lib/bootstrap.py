"""Bootstrap confidence intervals of a metric, and of the difference of a metric between two
models scored on the same rows (a paired bootstrap). The gate (`stages/cli/gate.py`) judges a
challenger with them; they know nothing of models or params.

    interval = paired_bootstrap(y, scores_a, scores_b, roc_auc, resamples=1000, seed=7,
                                confidence=0.95, strata=y)
    interval.estimate, interval.low, interval.high   # metric(a) - metric(b) and its interval

A resample draws the n rows with replacement (within each stratum when `strata` is given: a
classification resampled per class keeps its class counts, so ROC AUC is defined in every
resample, even in a small slice). Both models are scored on the *same* resampled rows, so
what the rows have in common (easy and hard rows) cancels out of the difference: a paired
interval is much narrower than two separate ones.

A resample is a row of counts (how often each row was drawn), and the metrics here take those
counts as weights: `metric(y, scores, weights)` with weights of shape (B, n) returns the B
resamples' values at once, so B = 1000 resamples of a few thousand rows take a fraction of a
second. ROC AUC is computed from ranks (the Mann-Whitney statistic, ties counting half) with one
sort of the scores for all resamples. A metric of your own is any function of that signature;
`weighted(fn)` wraps a plain `fn(y, scores) -> float` (slowly: one call per resample, each on
the rows repeated as drawn).

The interval is the percentile interval of the B resampled values at `confidence` (two-sided:
the 2.5th and 97.5th percentiles at 0.95), `se` their standard deviation (the bootstrap
standard error), and `detectable_difference(se, confidence)` the smallest true difference a
test at that confidence finds with 80% power: (z_{1-alpha/2} + z_{0.8}) x se.

Seeded (numpy's default generator with `seed`): the same inputs give the same interval.
Sums run in numpy (no BLAS matrix product), so the result does not depend on a BLAS build or
its thread count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

# metric(y (n,), scores (n,), weights (B, n)) -> (B,): the metric of each weighted resample
WeightedMetric = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

POWER = 0.8
# resample counts are built this many cells (resamples x rows) at a time, bounding memory
CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A statistic on the whole sample and its bootstrap interval.

    For `paired_bootstrap` the statistic is metric(a) - metric(b) and `values` holds
    (metric(a), metric(b)) on the whole sample; for `bootstrap`, the metric and (metric,)."""

    estimate: float
    low: float
    high: float
    se: float
    confidence: float
    resamples: int  # resamples whose statistic is defined (finite)
    values: tuple[float, ...] = ()

    @property
    def detectable(self) -> float:
        """The smallest true difference a test at `confidence` finds with 80% power."""
        return detectable_difference(self.se, self.confidence)


def detectable_difference(se: float, confidence: float, power: float = POWER) -> float:
    """(z_{1-alpha/2} + z_power) x se, alpha = 1 - confidence: the minimum detectable effect
    of a two-sided test at `confidence` (a one-sided one at alpha/2) with that power."""
    _check_confidence(confidence)
    if not 0.0 < power < 1.0:
        raise ValueError(f"bootstrap: power {power} is not in (0, 1)")
    z = NormalDist()
    return (z.inv_cdf(1.0 - (1.0 - confidence) / 2.0) + z.inv_cdf(power)) * float(se)


# --- metrics of weighted resamples ------------------------------------------------------------


def _sum(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    return (weights * values[None, :]).sum(axis=1)


def _class_weights_by_tie(
    y: np.ndarray, scores: np.ndarray, weights: np.ndarray, *, descending: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per resample and per group of tied scores, in score order (ascending or descending):
    the weight of the positives and of the negatives (what the rank metrics are sums of)."""
    order = np.argsort(-scores if descending else scores, kind="mergesort")
    ranked = scores[order]
    positive = np.asarray(y)[order] == 1
    # groups of tied scores: runs of equal values in the sorted scores
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
    return pos, neg


def roc_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of each weighted resample, from ranks: the share of (positive, negative) pairs
    ordered right, ties counting half (as sklearn's roc_auc_score); NaN without both classes."""
    pos, neg = _class_weights_by_tie(y, scores, weights, descending=False)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    right = (pos * (below + 0.5 * neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, right / np.where(pairs > 0, pairs, 1.0), np.nan)


def pr_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (sklearn's `average_precision_score`: precision at each distinct
    score, weighted by the recall it adds) of each weighted resample; NaN without a
    positive."""
    tp, fp = _class_weights_by_tie(y, scores, weights, descending=True)
    cum_tp, cum_all = np.cumsum(tp, axis=1), np.cumsum(tp + fp, axis=1)
    total = tp.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cum_all > 0, cum_tp / np.where(cum_all > 0, cum_all, 1.0), 0.0)
        ap = (tp * precision).sum(axis=1) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, ap, np.nan)


def brier(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean squared difference of probability and 0/1 label (lower is better)."""
    return _sum(weights, (scores - y) ** 2) / weights.sum(axis=1)


def mae(y: np.ndarray, predictions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean absolute error (lower is better)."""
    return _sum(weights, np.abs(y - predictions)) / weights.sum(axis=1)


def rmse(y: np.ndarray, predictions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Root mean squared error (lower is better)."""
    return np.sqrt(_sum(weights, (y - predictions) ** 2) / weights.sum(axis=1))


def r2(y: np.ndarray, predictions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Coefficient of determination, 1 - SSE / SST around the resample's own mean; NaN where
    the resample's targets are all equal."""
    total = weights.sum(axis=1)
    mean = _sum(weights, y) / total
    sst = (weights * (y[None, :] - mean[:, None]) ** 2).sum(axis=1)
    sse = _sum(weights, (y - predictions) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


@dataclass(frozen=True)
class Metric:
    fn: WeightedMetric
    higher_is_better: bool


METRICS: dict[str, Metric] = {
    "roc_auc": Metric(roc_auc, True),
    "pr_auc": Metric(pr_auc, True),
    "brier": Metric(brier, False),
    "mae": Metric(mae, False),
    "rmse": Metric(rmse, False),
    "r2": Metric(r2, True),
}


def weighted(fn: Callable[[np.ndarray, np.ndarray], float]) -> WeightedMetric:
    """A plain metric `fn(y, scores) -> float` as a WeightedMetric: each resample's rows are
    repeated as often as they were drawn (one call per resample: for metrics without a
    vectorised form here)."""

    def metric(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
        out = np.empty(len(weights))
        for i, counts in enumerate(weights):
            take = np.repeat(np.arange(len(y)), counts.astype("int64"))
            try:
                out[i] = float(fn(y[take], scores[take]))
            except ValueError:  # undefined on this resample (one class, say)
                out[i] = np.nan
        return out

    return metric


# --- resampling -------------------------------------------------------------------------------


def resample_counts(
    n: int, resamples: int, seed: int, strata: Sequence[Any] | np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Chunks of resamples as counts, float arrays of shape (b, n) (row i drawn counts[., i]
    times), b resamples at a time, `resamples` in all. With `strata`, each stratum's rows are
    drawn with replacement from that stratum only, so each resample keeps its size."""
    if n < 1:
        raise ValueError("bootstrap: no rows to resample")
    if resamples < 1:
        raise ValueError(f"bootstrap: resamples {resamples} is not >= 1")
    if strata is None:
        groups = [np.arange(n)]
    else:
        labels = np.asarray(strata)
        if labels.shape != (n,):
            raise ValueError(f"bootstrap: strata {labels.shape} do not match {n} rows")
        groups = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, CHUNK_CELLS // n))
    done = 0
    while done < resamples:
        b = min(chunk, resamples - done)
        offsets = (np.arange(b) * n)[:, None]
        counts = np.zeros(b * n, dtype="float64")
        for rows in groups:
            drawn = rows[rng.integers(0, len(rows), size=(b, len(rows)))]
            counts += np.bincount((drawn + offsets).ravel(), minlength=b * n)
        done += b
        yield counts.reshape(b, n)


def _arrays(y: Any, *scores: Any) -> tuple[np.ndarray, ...]:
    target = np.asarray(y, dtype="float64")
    out = [np.asarray(s, dtype="float64") for s in scores]
    if target.ndim != 1 or any(s.shape != target.shape for s in out):
        raise ValueError(
            f"bootstrap: targets {target.shape} and scores {[s.shape for s in out]} must be "
            "1-D of equal length"
        )
    if not (np.isfinite(target).all() and all(np.isfinite(s).all() for s in out)):
        raise ValueError("bootstrap: targets and scores must be finite numbers")
    return (target, *out)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap: confidence {confidence} is not in (0, 1)")


def _interval(
    estimate: float,
    replicates: np.ndarray,
    confidence: float,
    values: tuple[float, ...],
) -> Interval:
    usable = replicates[np.isfinite(replicates)]
    if len(usable) < 2:
        raise ValueError(
            f"bootstrap: the metric is defined on {len(usable)} of {len(replicates)} "
            "resamples: too few for an interval"
        )
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(usable, [tail, 1.0 - tail])
    return Interval(
        estimate=float(estimate),
        low=float(low),
        high=float(high),
        se=float(np.std(usable, ddof=1)),
        confidence=float(confidence),
        resamples=len(usable),
        values=tuple(float(v) for v in values),
    )


def _replicates(
    y: np.ndarray,
    scores: Sequence[np.ndarray],
    metric: WeightedMetric,
    resamples: int,
    seed: int,
    strata: Any,
) -> tuple[list[float], np.ndarray]:
    """The metric of each score vector on the whole sample, and on each resample (B, k)."""
    whole = np.ones((1, len(y)))
    full = [float(metric(y, s, whole)[0]) for s in scores]
    parts = [
        np.stack([metric(y, s, counts) for s in scores], axis=1)
        for counts in resample_counts(len(y), resamples, seed, strata)
    ]
    return full, np.concatenate(parts, axis=0)


def bootstrap(
    y: Any,
    scores: Any,
    metric: WeightedMetric,
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    strata: Any = None,
) -> Interval:
    """The metric of one model on the whole sample and its percentile bootstrap interval."""
    _check_confidence(confidence)
    target, s = _arrays(y, scores)
    full, reps = _replicates(target, [s], metric, resamples, seed, strata)
    if not np.isfinite(full[0]):
        raise ValueError("bootstrap: the metric is undefined on the whole sample")
    return _interval(full[0], reps[:, 0], confidence, (full[0],))


def paired_bootstrap(
    y: Any,
    scores_a: Any,
    scores_b: Any,
    metric: WeightedMetric,
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    strata: Any = None,
) -> Interval:
    """metric(a) - metric(b) on the whole sample and its paired percentile bootstrap interval:
    both models scored on the same resampled rows. For a lower-is-better metric, pass the
    reference as `scores_a` to get the challenger's improvement as a positive number.
    Identical scores give exactly [0, 0]."""
    _check_confidence(confidence)
    target, a, b = _arrays(y, scores_a, scores_b)
    full, reps = _replicates(target, [a, b], metric, resamples, seed, strata)
    if not all(np.isfinite(full)):
        raise ValueError("bootstrap: the metric is undefined on the whole sample")
    return _interval(full[0] - full[1], reps[:, 0] - reps[:, 1], confidence, tuple(full))
