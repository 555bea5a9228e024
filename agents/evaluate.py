"""Evaluate any controller (heuristic or SB3 policy) on dp-gym episodes, compare, and report.

Every record written says ``privacy_valid``; a comparison that includes an oracle run says
``privacy_valid: false`` at the top of every file it writes.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dp_gym.evaluation import ATTACK_COLUMNS

#: columns ``compare(..., audit=True)`` adds: the attacks on the final model, then the audit's bound
AUDIT_COLUMNS = (*ATTACK_COLUMNS, "epsilon_lower_bound")

#: What the per-episode epsilon does and does not cover (written into every results.json).
EPSILON_SCOPE = ("per episode: a controller trained or tuned on other episodes over the same private data "
                 "adds those episodes' epsilon by composition; only online mode is covered end to end")


@dataclass
class EpisodeResult:
    controller: str
    seed: int
    final_val_loss: float
    final_val_ppl: float
    base_val_ppl: float
    epsilon: float
    epsilon_budget: float
    delta: float
    updates: int
    steps: int
    wall_time_s: float
    privacy_valid: bool
    groups: list[str] = field(default_factory=list)
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    #: privacy attacks on the final model (``compare(..., audit=True)``); see dp_gym.evaluation
    privacy: dict[str, Any] | None = None

    def updates_to_reach(self, target_ppl: float) -> int | None:
        """First update count at which validation perplexity is <= ``target_ppl`` (None: never)."""
        for point in self.trajectory:
            if point["val_ppl"] <= target_ppl:
                return point["updates"]
        return None

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("trajectory")
        data.pop("groups")
        privacy = data.pop("privacy") or {}
        data.update({column: privacy.get(column) for column in AUDIT_COLUMNS} if privacy else {})
        return data


def run_episode(controller, env, seed: int, name: str,
                after: Callable[[Any], dict[str, Any]] | None = None) -> EpisodeResult:
    """One episode of ``controller`` (anything with SB3's ``predict``) on ``env``; ``after(env)``,
    if given, runs on the final state (before any reset) and fills ``privacy``."""
    unwrapped = env.unwrapped
    start = time.perf_counter()
    observation, info = env.reset(seed=seed)
    base_ppl = info["val_ppl"]
    trajectory = [{"updates": 0, "epsilon": 0.0, "val_ppl": base_ppl}]
    episode_start, state, steps, done = np.array([True]), None, 0, False
    while not done:
        action, state = controller.predict(observation, state=state, episode_start=episode_start, deterministic=True)
        observation, _, terminated, truncated, info = env.step(action)
        episode_start = np.array([False])
        steps += 1
        done = terminated or truncated
        trajectory.append({
            "updates": info["updates"], "epsilon": info["epsilon"], "val_ppl": info["val_ppl"],
            "clip": info["clip"].tolist(), "noise": info["noise"].tolist(), "prune": info["prune"].tolist(),
            "budget_projected": info["budget_projected"],
        })
    return EpisodeResult(
        controller=name, seed=seed, final_val_loss=info["val_loss"], final_val_ppl=info["val_ppl"],
        base_val_ppl=base_ppl, epsilon=info["epsilon"], epsilon_budget=unwrapped.config.epsilon,
        delta=info["delta"], updates=info["updates"], steps=steps, wall_time_s=time.perf_counter() - start,
        privacy_valid=bool(info["privacy_valid"]), groups=list(unwrapped.group_names), trajectory=trajectory,
        privacy=after(env) if after is not None else None)


def tune_vanilla(env_id: str, clips: Sequence[float], seed: int, overrides: dict[str, Any],
                 report: Callable[[str], None] | None = None) -> tuple[float, dict[float, float]]:
    """Grid-search the plain DP-SGD clip on the *public* validation perplexity (one episode per
    clip): the best-tuned baseline a fair comparison needs. Returns the best clip and all scores."""
    import dp_gym
    from agents.heuristics import make_controller

    env = dp_gym.make(env_id, **overrides)
    scores = {}
    for clip in clips:
        result = run_episode(make_controller("vanilla", env, clip=clip), env, seed, f"vanilla C={clip:g}")
        scores[clip] = result.final_val_ppl
        if report:
            report(f"  vanilla C={clip:g}: val ppl {result.final_val_ppl:.2f} (epsilon {result.epsilon:.3f})")
    env.close()
    return min(scores, key=scores.get), scores


def tune_learning_rate(env_id: str, clip: float, learning_rates: Sequence[float], seed: int,
                       overrides: dict[str, Any], report: Callable[[str], None] | None = None,
                       score_at_env_rate: float | None = None) -> tuple[float, dict[float, float]]:
    """Grid-search the fine-tuning learning rate of plain DP-SGD at ``clip`` on the *public*
    validation perplexity (one episode per rate). Returns the best rate and all scores.
    ``score_at_env_rate``: :func:`tune_vanilla`'s score at ``clip`` (same seed), reused for the
    environment's own rate instead of running that episode again (episodes are deterministic).

    The second stage of tuning the baseline: under Adam, a clip below every per-example norm
    only scales the whole clipped-and-noised sum, and Adam undoes a constant scale, so the clip
    grid alone cannot tune DP-SGD's step size; a controller that *changes* the clip over an
    episode changes the step size. A fair comparison tunes the baseline's learning rate too.
    """
    import dp_gym
    from agents.heuristics import make_controller
    from dp_gym.envs.registration import config_of

    env_rate = config_of(env_id, **overrides).learning_rate
    scores = {}
    for rate in learning_rates:
        if rate == env_rate and score_at_env_rate is not None:
            scores[rate] = score_at_env_rate
            if report:
                report(f"  vanilla C={clip:g} lr={rate:g}: val ppl {score_at_env_rate:.2f} (the clip search's episode)")
            continue
        env = dp_gym.make(env_id, **{**overrides, "learning_rate": rate})
        result = run_episode(make_controller("vanilla", env, clip=clip), env, seed, f"vanilla lr={rate:g}")
        env.close()
        scores[rate] = result.final_val_ppl
        if report:
            report(f"  vanilla C={clip:g} lr={rate:g}: val ppl {result.final_val_ppl:.2f} (epsilon {result.epsilon:.3f})")
    return min(scores, key=scores.get), scores


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t confidence interval (0 for one value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    from scipy import stats

    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def compare(controllers: dict[str, Callable[[Any], Any]], make_env: Callable[[], Any], seeds: Sequence[int],
            progress: Callable[[str], None] | None = None, audit: bool = False,
            audit_canaries: int = 256) -> list[EpisodeResult]:
    """Run every controller on every seed. ``controllers`` maps a name to ``factory(env)``.

    With ``audit``, each episode's final model is attacked (canary exposure, membership inference;
    ``dp_gym.evaluation.privacy_attacks``), and each controller gets one extra training run, the
    one-run audit, whose epsilon lower bound is stored with every episode of that controller.
    """
    from dp_gym.evaluation import one_run_audit, privacy_attacks

    env = make_env()
    unwrapped = env.unwrapped
    after = None
    if audit:
        reference = unwrapped.task.build_model()
        after = lambda env: privacy_attacks(env.unwrapped.run.model, env.unwrapped.task, reference)  # noqa: E731
    results = []
    for name, factory in controllers.items():
        controller = factory(env)
        mine = []
        for seed in seeds:
            if progress:
                progress(f"{name}, seed {seed}")
            mine.append(run_episode(controller, env, seed, name, after=after))
        if audit:
            if progress:
                progress(f"{name}, one-run audit ({audit_canaries} canaries)")
            config = unwrapped.config
            audit_config = config.from_dict({**config.to_dict(), "task_kwargs": {
                k: v for k, v in config.task_kwargs.items() if k not in ("n_canaries", "canary_repeats")}})
            bound = one_run_audit(audit_config, factory, n_canaries=audit_canaries, seed=seeds[0]).to_dict()
            for result in mine:
                result.privacy["audit"] = bound
                result.privacy["epsilon_lower_bound"] = bound["epsilon_lower_bound"]
        results.extend(mine)
    env.close()
    return results


def summarize(results: list[EpisodeResult], reference: str | None = "vanilla") -> list[dict[str, Any]]:
    """One row per controller: final perplexity mean +- 95% CI, epsilon, updates to reach the
    reference's final perplexity (same seed), wall time."""
    by_seed_reference = {r.seed: r.final_val_ppl for r in results if r.controller == reference}
    rows = []
    for name in dict.fromkeys(r.controller for r in results):
        mine = [r for r in results if r.controller == name]
        ppl, ppl_ci = mean_ci95([r.final_val_ppl for r in mine])
        reach = [r.updates_to_reach(by_seed_reference[r.seed]) for r in mine if r.seed in by_seed_reference]
        reached = [x for x in reach if x is not None]
        rows.append({
            "controller": name, "episodes": len(mine), "final_val_ppl": ppl, "final_val_ppl_ci95": ppl_ci,
            "epsilon": float(np.mean([r.epsilon for r in mine])), "epsilon_max": max(r.epsilon for r in mine),
            "epsilon_budget": mine[0].epsilon_budget,
            "updates_to_reference": float(np.mean(reached)) if reached else None,
            "reached_reference": f"{len(reached)}/{len(reach)}" if reach else "-",
            "updates": float(np.mean([r.updates for r in mine])),
            "wall_time_s": float(np.mean([r.wall_time_s for r in mine])),
            "privacy_valid": all(r.privacy_valid for r in mine),
        })
        if any(r.privacy for r in mine):
            for column in AUDIT_COLUMNS:
                values = [r.privacy[column] for r in mine if r.privacy and r.privacy.get(column) is not None]
                rows[-1][column] = float(np.mean(values)) if values else None
    return rows


def markdown_table(rows: list[dict[str, Any]], reference: str | None = "vanilla") -> str:
    header = ("| controller | final val ppl (mean +- 95% CI) | epsilon spent / budget | "
              f"updates to reach {reference or 'reference'}'s ppl | wall time (s) | privacy valid |")
    audited = any("epsilon_lower_bound" in row for row in rows)
    if audited:
        header += " exposure (bits) | MIA AUC loss / ref | TPR@1%FPR ref | audited epsilon lower bound |"
    lines = [header, "|---|---:|---:|---:|---:|:---:|" + ("---:|---:|---:|---:|" if audited else "")]
    for row in rows:
        reach = "-" if row["updates_to_reference"] is None else f"{row['updates_to_reference']:.0f} ({row['reached_reference']})"
        line = (f"| {row['controller']} | {row['final_val_ppl']:.2f} +- {row['final_val_ppl_ci95']:.2f} | "
                f"{row['epsilon']:.3f} / {row['epsilon_budget']:g} | {reach} | {row['wall_time_s']:.1f} | "
                f"{'yes' if row['privacy_valid'] else 'NO'} |")
        if audited:
            line += (f" {_fmt(row.get('exposure_mean'))} | {_fmt(row.get('mia_loss_auc'), 3)} / "
                     f"{_fmt(row.get('mia_reference_auc'), 3)} | {_fmt(row.get('mia_reference_tpr_at_1pct_fpr'), 3)} | "
                     f"{_fmt(row.get('epsilon_lower_bound'), 3)} |")
        lines.append(line)
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_report(results: list[EpisodeResult], out: str | Path, reference: str | None = "vanilla",
                 extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """results.csv, results.json, results.md and two PNG plots under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(results, reference)
    privacy_valid = all(r.privacy_valid for r in results)
    paths = {"csv": out / "results.csv", "json": out / "results.json", "markdown": out / "results.md",
             "ppl_vs_epsilon": out / "ppl_vs_epsilon.png", "controls": out / "controls_over_episode.png"}
    with paths["csv"].open("w", newline="") as handle:
        fields = list(results[0].summary())
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for result in results:
            writer.writerow(result.summary())
    paths["json"].write_text(json.dumps({
        "privacy_valid": privacy_valid, "epsilon_scope": EPSILON_SCOPE, **(extra or {}), "summary": rows,
        "episodes": [asdict(r) for r in results]}, indent=1))
    warning = "" if privacy_valid else "**privacy_valid: false** (oracle observations were used)\n\n"
    paths["markdown"].write_text(warning + markdown_table(rows, reference) + "\n")
    _plot_ppl_vs_epsilon(results, paths["ppl_vs_epsilon"], privacy_valid)
    _plot_controls(results, paths["controls"], privacy_valid)
    return paths


def _plot_ppl_vs_epsilon(results, path, privacy_valid):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _plot_controls(results, path, privacy_valid):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.controller for r in results))
    figure, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 5), squeeze=False, sharex=True)
    for column, name in enumerate(names):
        first = next(r for r in results if r.controller == name)
        points = first.trajectory[1:]
        updates = [p["updates"] for p in points]
        for row, control in enumerate(("clip", "noise")):
            axis = axes[row][column]
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


if __name__ == "__main__":  # `python -m agents.evaluate ...` is `dp-gym evaluate ...`
    import sys

    from dp_gym.cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))
