"""Environment throughput on dp_gym/TinyText-v0: steps/s, DP updates/s, and where the time goes.

One process, the plain DP-SGD action (calibrated equal noise, clip 0.5) for K = 1 and K = 4 with
the same 200-update episode; the K = 4 row is the issue's target (50 steps under 30 s, accounting
under 5% of a step).

    python benchmarks/env_throughput.py
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
from rich.console import Console
from rich.table import Table

import dp_gym  # noqa: F401  (registers the ids)


def run_episode(updates_per_step: int, max_updates: int, seed: int) -> dict:
    env = gym.make("dp_gym/TinyText-v0", updates_per_step=updates_per_step, max_updates=max_updates,
                   max_episode_steps=-(-max_updates // updates_per_step))
    unwrapped = env.unwrapped
    action = unwrapped.encode_action(clip=0.5, noise=unwrapped.calibrated_group_noise(), prune=0.0)
    env.reset(seed=seed)
    unwrapped.timings.clear()
    start = time.perf_counter()
    steps, done = 0, False
    while not done:
        *_, terminated, truncated, info = env.step(action)
        steps += 1
        done = terminated or truncated
    wall = time.perf_counter() - start
    timings = dict(unwrapped.timings)
    total = timings["total_step"]
    return {
        "K": updates_per_step, "steps": steps, "updates": info["updates"], "wall": wall,
        "steps_per_s": steps / wall, "updates_per_s": info["updates"] / wall,
        "dp": timings["dp_update"] / total, "eval": timings["evaluation"] / total,
        "accounting": timings["accounting"] / total,
        "other": 1 - (timings["dp_update"] + timings["evaluation"] + timings["accounting"]) / total,
        "epsilon": info["epsilon"], "val_ppl": info["val_ppl"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-updates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [run_episode(k, args.max_updates, args.seed) for k in (1, 4)]
    table = Table(title=f"dp_gym/TinyText-v0, {args.max_updates}-update episode, plain DP-SGD action")
    for column in ("K", "steps", "episode s", "steps/s", "updates/s", "DP update", "evaluation",
                   "accounting", "other", "epsilon", "val ppl"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(str(r["K"]), str(r["steps"]), f"{r['wall']:.1f}", f"{r['steps_per_s']:.2f}",
                      f"{r['updates_per_s']:.2f}", f"{r['dp']:.1%}", f"{r['eval']:.1%}", f"{r['accounting']:.1%}",
                      f"{r['other']:.1%}", f"{r['epsilon']:.3f}", f"{r['val_ppl']:.1f}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
