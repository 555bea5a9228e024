"""Before a deployment: each controller against action 0 on the same public proxy instances.

A controller trained on proxies is only worth deploying if it beats the env's action 0 (on the
recommended ids, proxy-tuned DP-SGD) on proxies it was not trained on. This check touches no private
data and spends no privacy: every episode runs on a public proxy instance (``ProxyEnv``), drawn
from public seeds ``--first-seed`` onwards, so every controller meets the same instances (the DP
noise stays secret and differs between episodes, so the pairing is of instances, not of noise).
The library's version, which also chooses what to deploy, is ``dp-gym select``
(:mod:`agents.selection`).

For each controller it prints the mean and median of ``ppl / ppl(action 0) - 1`` over the instances
(lower is better) and on how many instances it won.

    python benchmarks/proxy_check.py --env dp_gym/TinyTextBudgetSchedule-v0 \\
        --controllers sac:runs/sac/model.zip vanilla [--instances 8] [--threads 2]
"""

from __future__ import annotations

import argparse

import numpy as np

from agents.selection import ACTION_ZERO, proxy_check
from dp_gym.envs import InstanceDistribution
from dp_gym.utils.quiet import quiet_libraries
from dp_gym.utils.threads import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--controllers", nargs="+", required=True, help="controller specs, as for `dp-gym compare`")
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=100,
                        help="public seeds of the instances (keep them apart from those a run trained on)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-updates", type=int, default=None, help="shorter episodes (a smoke test)")
    args = parser.parse_args()
    quiet_libraries()
    configure_threads(args.threads)
    distribution = InstanceDistribution(max_updates=(args.max_updates,)) if args.max_updates else None
    seeds = range(args.first_seed, args.first_seed + args.instances)
    results = proxy_check(args.env, args.controllers, seeds, distribution)
    reference = results[ACTION_ZERO]
    print(f"| controller | mean relative vs action 0 | median | wins / {args.instances} | metric per instance |")
    print("|---|---:|---:|---:|---|")
    for name, metrics in results.items():
        relative = metrics / reference - 1
        print(f"| {name} | {100 * relative.mean():+.1f}% | {100 * np.median(relative):+.1f}% | "
              f"{int((relative < 0).sum())} | {' '.join(f'{m:.2f}' for m in metrics)} |")


if __name__ == "__main__":
    main()
