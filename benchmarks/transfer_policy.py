"""What each controller did in a transfer run's deployments: how it spent the budget over the
episode, what clip it chose, and its public validation perplexity along the way.

Reads the ``deployments.json`` that ``benchmarks/controller_transfer.py`` writes (every deployment's
trajectory) and prints one row per (env, epsilon, controller), averaged over the seeds:

* the share of the budget spent after 25%, 50% and 75% of the updates, in the privacy filter's
  units (linear in evenly paced updates, unlike epsilon: even pacing reads 0.25 / 0.50 / 0.75;
  above that, front-loaded);
* the clip's geometric mean over the groups and the steps, early (first quarter) and late (last
  quarter) in the episode;
* the public validation perplexity at those points and at the end (the learning curve);
* where the returned iterate was, as a share of the updates (1.00: the last; below 1 with
  ``returned_model: best_public``, whose public selection split chose an earlier one), and its
  perplexity.

Everything it reads is already public: the controls a controller chose, the ledger's share of the
budget and perplexity on public validation records.

    python benchmarks/transfer_policy.py runs/bench/transfer/deployments.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

QUARTERS = (0.25, 0.5, 0.75)


def at_fraction(trajectory: list[dict], key: str, fraction: float) -> float:
    """``key`` at the first point whose update count reaches ``fraction`` of the episode's."""
    total = trajectory[-1]["updates"]
    return next(point[key] for point in trajectory if point["updates"] >= fraction * total)


def clip_over(trajectory: list[dict], low: float, high: float) -> float:
    """Geometric mean of the clips (every group) over the steps in ``[low, high)`` of the episode."""
    steps = trajectory[1:]
    chosen = steps[int(low * len(steps)) : max(int(low * len(steps)) + 1, int(high * len(steps)))]
    return float(np.exp(np.mean([np.log(point["clip"]) for point in chosen])))


def returned_update(deployment: dict) -> int:
    """The update count of the iterate a deployment returned: ``returned_updates`` where recorded;
    for a run that predates the field, the first step whose perplexity is the final one."""
    if deployment.get("returned_updates") is not None:
        return int(deployment["returned_updates"])
    trajectory = deployment["trajectory"]
    return next(point["updates"] for point in trajectory if point["val_ppl"] == deployment["final_val_ppl"])


def summarize(deployments: list[dict]) -> list[dict]:
    """One row per (env, epsilon, controller): the seed-means of :func:`at_fraction` and :func:`clip_over`."""
    cells: dict[tuple, list[dict]] = {}
    for deployment in deployments:
        cells.setdefault((deployment["env"], deployment["epsilon"], deployment["controller"]), []).append(deployment)
    rows = []
    for (env, epsilon, controller), runs in cells.items():
        kept = [run for run in runs if len(run["trajectory"]) > 1]  # (a run that took a step)
        trajectories = [run["trajectory"] for run in kept]
        row = {"env": env, "epsilon": epsilon, "controller": controller, "seeds": len(trajectories)}
        for fraction in QUARTERS:
            row[f"spent@{fraction:g}"] = float(np.mean([at_fraction(t, "budget_spent", fraction) for t in trajectories]))
            row[f"ppl@{fraction:g}"] = float(np.mean([at_fraction(t, "val_ppl", fraction) for t in trajectories]))
        row["ppl@1"] = float(np.mean([t[-1]["val_ppl"] for t in trajectories]))
        row["returned_at"] = float(np.mean([returned_update(run) / run["trajectory"][-1]["updates"] for run in kept]))
        row["returned_ppl"] = float(np.mean([run["final_val_ppl"] for run in kept]))
        row["clip_early"] = float(np.mean([clip_over(t, 0.0, 0.25) for t in trajectories]))
        row["clip_late"] = float(np.mean([clip_over(t, 0.75, 1.0) for t in trajectories]))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployments", type=Path, help="a controller_transfer.py run's deployments.json")
    args = parser.parse_args()
    rows = summarize(json.loads(args.deployments.read_text())["deployments"])
    print("| env | epsilon | controller | budget spent at 25 / 50 / 75% of updates | clip early -> late | "
          "val ppl at 25 / 50 / 75 / 100% | returned at (share of updates) | returned ppl |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        spent = " / ".join(f"{r[f'spent@{f:g}']:.2f}" for f in QUARTERS)
        ppl = " / ".join(f"{r[f'ppl@{f:g}']:.1f}" for f in (*QUARTERS, 1))
        print(f"| {r['env'].removeprefix('dp_gym/')} | {r['epsilon']:g} | {r['controller']} | {spent} | "
              f"{r['clip_early']:.3f} -> {r['clip_late']:.3f} | {ppl} | {r['returned_at']:.2f} | {r['returned_ppl']:.1f} |")


if __name__ == "__main__":
    main()
