"""PNG plots of episode results: utility against epsilon spent, and the controls over an episode."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dp_gym.evaluation.rollout import EpisodeResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ppl_vs_epsilon(results: list[EpisodeResult], path: Path, privacy_valid: bool) -> Path:
    """Public validation perplexity against epsilon spent, one line per episode, a colour per controller."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, name in enumerate(dict.fromkeys(r.controller for r in results)):
        for k, result in enumerate(r for r in results if r.controller == name):
            xs = [p["epsilon"] for p in result.trajectory]
            ys = [p["val_ppl"] for p in result.trajectory]
            axis.plot(xs, ys, color=f"C{index}", alpha=0.8, label=name if k == 0 else None)
    axis.set_xlabel("epsilon spent")
    axis.set_ylabel("public validation perplexity")
    axis.set_yscale("log")
    axis.set_title("utility vs privacy spent" + ("" if privacy_valid else " (privacy_valid: false)"))
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


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
