"""PNG plots of episode results: utility against epsilon spent, the controls over an episode, and
performance profiles of the final perplexity."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dp_gym.evaluation.rollout import EpisodeResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(figure, axis, path: Path, xlabel: str, ylabel: str, title: str, xscale: str = "linear",
            yscale: str = "linear") -> Path:
    """Label one-axis figure ``figure``, write it to ``path`` and close it."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_xscale(xscale)
    axis.set_yscale(yscale)
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return Path(path)


def plot_ppl_vs_epsilon(results: list[EpisodeResult], path: Path, privacy_valid: bool) -> Path:
    """Public validation perplexity against epsilon spent, one line per episode, a colour per controller."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, name in enumerate(dict.fromkeys(r.controller for r in results)):
        for k, result in enumerate(r for r in results if r.controller == name):
            xs = [p["epsilon"] for p in result.trajectory]
            ys = [p["val_ppl"] for p in result.trajectory]
            axis.plot(xs, ys, color=f"C{index}", alpha=0.8, label=name if k == 0 else None)
    return _finish(figure, axis, path, "epsilon spent", "public validation perplexity",
                   "utility vs privacy spent" + ("" if privacy_valid else " (privacy_valid: false)"), yscale="log")


def plot_controls(results: list[EpisodeResult], path: Path, privacy_valid: bool) -> Path:
    """Per-group clip and noise over the first episode of each controller."""
    plt = _pyplot()
    names = list(dict.fromkeys(r.controller for r in results))
    figure, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 5), squeeze=False, sharex=True)
    for column, name in enumerate(names):
        first = next(r for r in results if r.controller == name)
        points = first.trajectory[1:]
        updates = [p["updates"] for p in points]
        for row, control in enumerate(("clip", "noise")):
            axis = axes[row][column]
            if points:
                values = np.array([p[control] for p in points])
                for index, group in enumerate(first.groups):
                    axis.plot(updates, values[:, index], label=group)
            axis.set_yscale("log")
            axis.set_title(f"{name}: {control}" if row == 0 else "", fontsize=9)
            axis.set_ylabel(control)
            if row == 1:
                axis.set_xlabel("updates")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"per-group clip and noise over an episode (seed {results[0].seed})"
                    + ("" if privacy_valid else " - privacy_valid: false"), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def performance_profile(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    r"""The run-score distribution of lower-is-better scores (Agarwal et al., 2021):
    :math:`F(\tau) = \frac{1}{n} \sum_i [x_i \le \tau]` at each threshold."""
    values = np.asarray(values, dtype=float)[:, None]
    return np.mean(values <= np.asarray(thresholds, dtype=float)[None, :], axis=0)


def plot_performance_profiles(results: list[EpisodeResult], path: Path, privacy_valid: bool, reps: int = 1000) -> Path:
    """Each controller's performance profile of final perplexity (the fraction of its runs at or below
    each perplexity; higher and further left is better), with a 95% bootstrap band over its runs."""
    plt = _pyplot()
    names = list(dict.fromkeys(r.controller for r in results))
    finals = {name: np.array([r.final_val_ppl for r in results if r.controller == name]) for name in names}
    pooled = np.concatenate([v[np.isfinite(v)] for v in finals.values()])
    thresholds = np.geomspace(max(pooled.min(), 1e-9) * 0.98, pooled.max() * 1.02, 200) if len(pooled) else np.ones(1)
    rng = np.random.default_rng(0)  # resamples released results only: public randomness
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, name in enumerate(names):
        values = finals[name]
        axis.step(thresholds, performance_profile(values, thresholds), where="post", color=f"C{index}", label=name)
        if len(values) > 1:
            boots = np.stack([performance_profile(rng.choice(values, len(values)), thresholds) for _ in range(reps)])
            low, high = np.percentile(boots, [2.5, 97.5], axis=0)
            axis.fill_between(thresholds, low, high, step="post", color=f"C{index}", alpha=0.15)
    return _finish(figure, axis, path, "final public validation perplexity tau", "fraction of runs with perplexity <= tau",
                   "performance profiles" + ("" if privacy_valid else " (privacy_valid: false)"), xscale="log")


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """The trailing mean over ``window`` points (fewer at the start)."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def plot_learning_curves(runs: dict[str, list[tuple[np.ndarray, np.ndarray]]], path: Path, window: int = 5,
                         metric: str = "final public validation perplexity") -> Path:
    """Learning curves of training runs: for each label, its runs' ``(timesteps, final metric of each
    finished episode)`` (increasing timesteps), smoothed over ``window`` episodes; with several runs
    per label, their mean on the timesteps they share and a 95% t-interval band across runs."""
    from scipy import stats

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, (label, curves) in enumerate(runs.items()):
        curves = [(np.asarray(x, float), smoothed(y, window)) for x, y in curves if len(x)]
        if not curves:
            continue
        start, end = max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves)
        if len(curves) == 1 or start >= end:  # one run, or runs that share no timesteps: each on its own
            for k, curve in enumerate(curves):
                axis.plot(*curve, color=f"C{index}", alpha=1.0 if len(curves) == 1 else 0.6,
                          label=label if k == 0 else None)
            continue
        grid = np.linspace(start, end, 100)
        stacked = np.stack([np.interp(grid, x, y) for x, y in curves])
        mean = stacked.mean(axis=0)
        half = stats.t.ppf(0.975, len(curves) - 1) * stacked.std(axis=0, ddof=1) / np.sqrt(len(curves))
        axis.plot(grid, mean, color=f"C{index}", label=f"{label} ({len(curves)} runs)")
        axis.fill_between(grid, mean - half, mean + half, color=f"C{index}", alpha=0.2)
    return _finish(figure, axis, path, "training timesteps", f"{metric} (mean of {window} episodes)",
                   "learning curves", yscale="log")
