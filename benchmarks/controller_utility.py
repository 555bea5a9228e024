"""The number that matters: SAC vs tuned DP-SGD vs adaptive quantile clipping on dp_gym/TinyText-v0.

Epsilon 3, delta 1e-5, 5 evaluation seeds (disjoint from the tuning and training seeds). Prints
final public-validation perplexity (mean +- 95% CI), the relative change vs vanilla, and the
updates SAC needs to reach vanilla's final perplexity (RLDP reports -5.4% perplexity and 13-43%
of the updates).

    python benchmarks/controller_utility.py [--timesteps 500] [--seeds 5] [--out runs/bench/controller_utility]
"""

from __future__ import annotations

import argparse

import dp_gym
from agents.evaluate import compare, markdown_table, summarize, tune_vanilla, write_report
from agents.heuristics import make_controller
from agents.rl import load_policy, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dp_gym/TinyText-v0")
    parser.add_argument("--timesteps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--clips", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--out", default="runs/bench/controller_utility")
    args = parser.parse_args()

    best_clip, scores = tune_vanilla(args.env, args.clips, seed=0, overrides={}, report=print)
    model_path = train(args.env, "sac", args.timesteps, seed=0, out=f"{args.out}/sac", progress_bar=False,
                       checkpoint_every=max(args.timesteps // 2, 1))
    controllers = {
        "vanilla": lambda env: make_controller("vanilla", env, clip=best_clip),
        "adaptive_quantile": lambda env: make_controller("adaptive_quantile", env),
        "sac": lambda env: load_policy(f"sac:{model_path}"),
    }
    results = compare(controllers, lambda: dp_gym.make(args.env), seeds=range(1000, 1000 + args.seeds))
    write_report(results, args.out, extra={"vanilla_clip": best_clip, "vanilla_scores": scores,
                                           "sac_timesteps": args.timesteps})
    rows = summarize(results)
    vanilla = next(r for r in rows if r["controller"] == "vanilla")
    print(f"\n{args.env}, epsilon 3, delta 1e-5, {args.seeds} seeds; vanilla clip {best_clip:g} "
          f"(tuned on public validation); SAC trained {args.timesteps} steps")
    print(markdown_table(rows))
    for row in rows:
        change = 100 * (row["final_val_ppl"] / vanilla["final_val_ppl"] - 1)
        print(f"{row['controller']}: {change:+.1f}% perplexity vs vanilla")


if __name__ == "__main__":
    main()
