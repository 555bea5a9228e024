"""Aggregates a reviewer accepts over few runs (Agarwal et al., "Deep RL at the Edge of the Statistical
Precipice", NeurIPS 2021): the interquartile mean (IQM), 95% stratified-bootstrap intervals, and the
probability of improvement.

Written here rather than taken from ``rliable``: rliable 1.2.0 needs ``arch < 8``, whose 7.x releases
do not import with pandas 3, and its bootstrap breaks on arch 8's API. The statistics are short:

* ``IQM``: the mean of the middle 50% of the scores (``scipy.stats.trim_mean(x, 0.25)``);
* the stratified bootstrap resamples the runs of every task (stratum) with replacement, keeping the
  number of runs per task, and takes percentile intervals of the statistic;
* ``P(X < Y)`` averages over tasks the Mann-Whitney probability that a run of X scores lower
  (better, for perplexities) than a run of Y, ties counting one half.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from scipy import stats

Scores = Mapping[str, np.ndarray]  # task -> scores of its runs (1-D)


def iqm(values: np.ndarray) -> float:
    """The interquartile mean of all values."""
    return float(stats.trim_mean(np.ravel(values), 0.25))


def stratified_bootstrap(scores: Scores, statistic: Callable[[np.ndarray], float] = iqm, reps: int = 2000,
                         confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(point, low, high)``: the statistic of the pooled runs and its percentile interval when the
    runs of each task are resampled with replacement.

    Raises:
        ValueError: for no task, or a task without runs.
    """
    if not scores or any(len(np.ravel(v)) == 0 for v in scores.values()):
        raise ValueError("stratified_bootstrap needs at least one run in every task")
    rng = np.random.default_rng(seed)
    strata = [np.ravel(np.asarray(v, dtype=float)) for v in scores.values()]
    point = statistic(np.concatenate(strata))
    draws = np.array([statistic(np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata]))
                      for _ in range(reps)])
    tail = (1 - confidence) / 2
    # outward rounding of the quantiles: never narrower, and exact with infinite (diverged) scores
    return (float(point), float(np.quantile(draws, tail, method="lower")),
            float(np.quantile(draws, 1 - tail, method="higher")))


def probability_of_improvement(lower: Scores, other: Scores) -> float:
    """``P(X < Y)``, averaged over the tasks both have (X: ``lower``'s runs, Y: ``other``'s)."""
    tasks = [task for task in lower if task in other]
    if not tasks:
        raise ValueError("probability_of_improvement needs at least one task in common")
    probabilities = []
    for task in tasks:
        x, y = np.ravel(lower[task])[:, None], np.ravel(other[task])[None, :]
        probabilities.append(float(np.mean((x < y) + 0.5 * (x == y))))
    return float(np.mean(probabilities))
