"""The one results writer: CSV, JSON and Markdown tables (and the plots) from typed episode results.

Every file says ``privacy_valid`` and, in JSON, each episode's full :class:`PrivacyReport`; a
results set that includes any invalid run says ``privacy_valid: false`` at the top of every file.
Configs and overrides pass through :func:`dp_gym.config.public_config` first: no record is ever
written.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dp_gym.config import public_config
from dp_gym.evaluation.attacks import ATTACK_COLUMNS
from dp_gym.evaluation.rollout import EpisodeResult
from dp_gym.privacy import compose

#: columns ``compare(..., audit=True)`` adds: the attacks on the final model, then the audit's bound
AUDIT_COLUMNS = (*ATTACK_COLUMNS, "epsilon_lower_bound")


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% Student-t confidence interval (None for one value: no
    interval can be given)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), None
    from scipy import stats

    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def summarize(results: list[EpisodeResult], reference: str | None = "vanilla") -> list[dict[str, Any]]:
    """One row per controller: final perplexity mean +- 95% t-interval, its interquartile mean with
    a 95% stratified-bootstrap interval (Agarwal et al., 2021: robust to the odd diverged run), the
    probability of improvement over the reference (``P(ppl < ppl_ref)`` over all pairs of runs),
    epsilon (proven and spent), updates to reach the reference's final perplexity (same seed), wall
    time."""
    from dp_gym.evaluation.aggregate import probability_of_improvement, stratified_bootstrap

    def worst_if_diverged(values) -> np.ndarray:  # a diverged (NaN) run ranks below every finite one
        values = np.asarray(values, dtype=float)
        return np.where(np.isnan(values), np.inf, values)

    ran = [r for r in results if r.error is None]  # an episode that raised is no result of its controller
    by_seed_reference = {r.seed: r.final_val_ppl for r in ran if r.controller == reference}
    reference_ppl = worst_if_diverged([r.final_val_ppl for r in ran if r.controller == reference])
    rows = []
    for name in dict.fromkeys(r.controller for r in results):
        every = [r for r in results if r.controller == name]
        mine = [r for r in every if r.error is None]
        values = worst_if_diverged([r.final_val_ppl for r in mine])
        ppl, ppl_ci = mean_ci95(values) if len(values) else (float("nan"), None)
        iqm, iqm_low, iqm_high = stratified_bootstrap({"env": values}) if len(values) else (float("nan"),) * 3
        improves = (probability_of_improvement({"env": values}, {"env": reference_ppl})
                    if len(reference_ppl) and len(values) and name != reference else None)
        reach = [r.updates_to_reach(by_seed_reference[r.seed]) for r in mine if r.seed in by_seed_reference]
        reached = [x for x in reach if x is not None]
        rows.append({
            "controller": name, "episodes": len(mine), "final_val_ppl": ppl, "final_val_ppl_ci95": ppl_ci,
            "final_val_ppl_iqm": iqm, "final_val_ppl_iqm_ci95": None if len(values) < 2 else [iqm_low, iqm_high],
            "p_improvement": improves,
            # privacy covers every episode, the ones that raised too (each at most its budget)
            "epsilon": max(r.epsilon for r in every),
            "epsilon_spent": float(np.mean([r.privacy.epsilon_spent for r in every])),
            "epsilon_budget": every[0].privacy.epsilon_budget, "delta": every[0].privacy.delta,
            "accounting": ", ".join(sorted({r.privacy.accounting for r in every})),
            "updates_to_reference": float(np.mean(reached)) if reached else None,
            "reached_reference": f"{len(reached)}/{len(reach)}" if reach else "-",
            "updates": float(np.mean([r.updates for r in mine])) if mine else float("nan"),
            "wall_time_s": float(np.mean([r.wall_time_s for r in mine])) if mine else float("nan"),
            "privacy_valid": all(r.privacy_valid for r in every),
            "failures": sum(r.failure is not None for r in mine), "metric_name": every[0].metric_name,
            "errors": len(every) - len(mine), "error_messages": sorted({r.error for r in every if r.error}),
            "private_episodes": max(r.privacy.private_episodes for r in every),
            "epsilon_scope": "; ".join(sorted({r.privacy.epsilon_scope for r in every})),
            "base_val_ppl": float(np.mean([r.base_val_ppl for r in mine])) if mine else float("nan"),
        })
        if any(r.attacks for r in mine):
            for column in AUDIT_COLUMNS:
                values = [r.attacks[column] for r in mine if r.attacks and r.attacks.get(column) is not None]
                rows[-1][column] = float(np.mean(values)) if values else None
    return rows


def _table(rows: list[dict[str, Any]], reference: str | None) -> tuple[list[str], list[str], list[list[str]]]:
    """``(columns, markdown alignments, cells)`` of the comparison table (see :func:`markdown_table`)."""
    metric = rows[0].get("metric_name", "perplexity") if rows else "perplexity"
    metric = "ppl" if metric == "perplexity" else metric
    compared = reference is not None and any(row["controller"] == reference for row in rows)
    columns = ["controller", f"final val {metric} (mean +- 95% CI)", "IQM [95% bootstrap CI]"]
    columns += [f"P(better than {reference})"] if compared else []
    columns += ["epsilon (spent) / budget", "private episodes"]
    columns += [f"updates to reach {reference}'s {metric}"] if compared else []
    columns += ["wall time (s)", "privacy valid"]
    aligns = ["---"] + ["---:"] * (len(columns) - 2) + [":---:"]
    audited = any("epsilon_lower_bound" in row for row in rows)
    if audited:
        columns += ["exposure (bits)", "MIA AUC loss / ref", "TPR@1%FPR ref", "audited epsilon lower bound"]
        aligns += ["---:"] * 4
    table = []
    for row in rows:
        reach = "-" if row["updates_to_reference"] is None else f"{row['updates_to_reference']:.0f} ({row['reached_reference']})"
        budget = "-" if row["epsilon_budget"] is None else f"{row['epsilon_budget']:g}"
        ci = "n/a" if row["final_val_ppl_ci95"] is None else f"{row['final_val_ppl_ci95']:.2f}"
        iqm_ci = row["final_val_ppl_iqm_ci95"]
        iqm = f"{row['final_val_ppl_iqm']:.2f}" + (" [n/a]" if iqm_ci is None else f" [{iqm_ci[0]:.2f}, {iqm_ci[1]:.2f}]")
        name = row["controller"] + (f" ({row['errors']} raised)" if row.get("errors") else "")
        cells = [name, f"{row['final_val_ppl']:.2f} +- {ci}", iqm]
        cells += [_fmt(row["p_improvement"])] if compared else []
        cells += [f"{row['epsilon']:.3f} ({row['epsilon_spent']:.3f}) / {budget}", str(row["private_episodes"])]
        cells += [reach] if compared else []
        cells += [f"{row['wall_time_s']:.1f}", "yes" if row["privacy_valid"] else "NO"]
        if audited:
            cells += [_fmt(row.get("exposure_mean")),
                      f"{_fmt(row.get('mia_loss_auc'), 3)} / {_fmt(row.get('mia_reference_auc'), 3)}",
                      _fmt(row.get("mia_reference_tpr_at_1pct_fpr"), 3), _fmt(row.get("epsilon_lower_bound"), 3)]
        table.append(cells)
    return columns, aligns, table


def markdown_table(rows: list[dict[str, Any]], reference: str | None = "vanilla") -> str:
    """The comparison table. ``epsilon`` is the proven epsilon of everything in scope (a deployment,
    plus what its controller carries from private training or tuning; for an adaptive controller
    the filter's budget); ``spent`` is what the deployment's updates spent under the accounting
    rule; ``private episodes`` counts the private runs in scope ("1": the deployment alone)."""
    columns, aligns, table = _table(rows, reference)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table]
    return "\n".join(lines)


def natural_width(table, limit: int = 200) -> int:
    """The width at which ``table`` needs no wrapping (at most ``limit``)."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=limit)
    return min(limit, Measurement.get(console, console.options, table).maximum)


#: shorter headers for a terminal (the Markdown file keeps the long ones)
_TERMINAL_HEADERS = {"final val ppl": "final ppl (95% CI)", "IQM": "IQM [95% CI]", "privacy valid": "valid"}


def terminal_table(rows: list[dict[str, Any]], reference: str | None = "vanilla",
                   settings: dict[str, str] | None = None):
    """:func:`markdown_table` as a ``rich`` table for a terminal: each controller's settings (tuned
    values) in a column, the base model's metric and "privacy valid" (when every row is) in the
    caption, wall time left to the results files. Headers are short words, so they wrap between
    words; a long settings text folds within 24 columns. Print it at its natural width where the
    output is not a terminal (:func:`natural_width`)."""
    from rich.table import Table
    from rich.text import Text  # plain text, never markup: "[n/a]" would be read as a style tag

    columns, _, table = _table(rows, reference)
    keep = [index for index, column in enumerate(columns) if column != "wall time (s)"]
    all_valid = all(row["privacy_valid"] for row in rows)
    if all_valid:
        keep = [index for index in keep if columns[index] != "privacy valid"]
    settings = {name: text for name, text in (settings or {}).items() if text}
    metric = rows[0].get("metric_name", "perplexity") if rows else "perplexity"
    base = [row["base_val_ppl"] for row in rows if row.get("base_val_ppl") is not None]
    notes = [f"base model before fine-tuning: val {metric} {np.mean(base):.2f}"] if base else []
    notes += ["privacy valid: every row"] if all_valid else []
    rich = Table(caption=Text("; ".join(notes)) if notes else None, caption_justify="left")
    for position, index in enumerate(keep):
        column = columns[index]
        header = _TERMINAL_HEADERS.get(column.split(" (mean")[0].split(" [")[0], column)
        if column.startswith("updates to reach"):
            header = column.replace("updates to reach", "updates to")
        if position == 0:  # a controller's name is never cut
            rich.add_column(Text(header), justify="left",
                            min_width=max([len(cells[0]) for cells in table] + [len(header)]))
        else:
            rich.add_column(Text(header), justify="right")
        if position == 0 and settings:
            rich.add_column("settings", justify="left", max_width=24, overflow="fold")
    for row, cells in zip(rows, table, strict=True):
        kept = [cells[index] for index in keep]
        if settings:
            kept = [kept[0], settings.get(row["controller"], "-"), *kept[1:]]
        rich.add_row(*(Text(cell) for cell in kept))
    return rich


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_report(results: list[EpisodeResult], out: str | Path, reference: str | None = "vanilla",
                 extra: dict[str, Any] | None = None, plots: bool = True) -> dict[str, Path]:
    """``results.csv``, ``results.json``, ``results.md`` and three PNG plots under ``out``.

    ``extra`` (the env id, its overrides, tuned values, ...) goes into the JSON after
    :func:`dp_gym.config.public_config` removes any record list from it.
    """
    from dp_gym.evaluation.plots import plot_controls, plot_performance_profiles, plot_ppl_vs_epsilon

    if not results:
        raise ValueError("write_report needs at least one episode result")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(results, reference)
    privacy_valid = all(r.privacy_valid for r in results)
    columns = AUDIT_COLUMNS if any(r.attacks for r in results) else ()
    paths = {"csv": out / "results.csv", "json": out / "results.json", "markdown": out / "results.md"}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(results[0].summary(columns)))
        writer.writeheader()
        for result in results:
            writer.writerow(result.summary(columns))
    scopes = sorted({r.privacy.epsilon_scope for r in results})
    # every episode here ran on the same private data: what releasing this whole file costs (an upper
    # bound: a prior that several deployments carry is counted once per deployment)
    everything = compose([r.privacy for r in results], "every episode in this file, composed")
    paths["json"].write_text(json.dumps(public_config({
        "privacy_valid": privacy_valid, "epsilon_scope": scopes[0] if len(scopes) == 1 else scopes,
        "privacy_of_all_episodes": everything.to_dict(history=False),
        **(extra or {}), "summary": rows, "episodes": [r.to_dict() for r in results]}), indent=1))
    warning = "" if privacy_valid else "**privacy_valid: false** (oracle observations or a broken configuration)\n\n"
    raised = "".join(f"\n- {r.controller}, seed {r.seed}: raised {r.error}" for r in results if r.error)
    raised = ("\n\nEpisodes that raised (left out of the statistics; their epsilon is bounded by the budget):"
              + raised) if raised else ""
    paths["markdown"].write_text(warning + markdown_table(rows, reference) + raised + "\n")
    results = [r for r in results if r.error is None]
    if plots and results:
        paths["ppl_vs_epsilon"] = plot_ppl_vs_epsilon(results, out / "ppl_vs_epsilon.png", privacy_valid)
        paths["controls"] = plot_controls(results, out / "controls_over_episode.png", privacy_valid)
        paths["performance_profiles"] = plot_performance_profiles(results, out / "performance_profiles.png",
                                                                  privacy_valid)
    return paths


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """Write a JSON results file atomically, with every record list redacted (:func:`public_config`)."""
    from dp_gym.utils.files import atomic_write_text

    return atomic_write_text(Path(path), json.dumps(public_config(data), indent=1))
