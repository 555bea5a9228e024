"""Before a deployment: each controller against action 0 on the same public proxy instances.

A controller trained on proxies is only worth deploying if it beats the env's action 0 (on the
recommended ids, proxy-tuned DP-SGD) on proxies it was not trained on. This check touches no private
data and spends no privacy: every episode runs on a public proxy instance (``ProxyEnv``), drawn
from public seeds ``--first-seed`` onwards, so every controller meets the same instances (the DP
noise stays secret and differs between episodes, so the pairing is of instances, not of noise).

For each controller it prints the mean and median of ``ppl / ppl(action 0) - 1`` over the instances
(lower is better) and on how many instances it won.

    python benchmarks/proxy_check.py --env dp_gym/TinyTextBudgetSchedule-v0 \\
        --controllers sac:runs/sac/model.zip vanilla [--instances 8] [--threads 2]
"""

from __future__ import annotations

import argparse

import numpy as np

import dp_gym
from agents.controllers import controller_factory
from dp_gym.envs import InstanceDistribution, ProxyEnv
from dp_gym.evaluation import run_episode
from dp_gym.utils.quiet import quiet_libraries
from dp_gym.utils.threads import configure_threads


class ActionZero:
    """The env's action 0, as a controller."""

    def __init__(self, env):
        self.shape = env.action_space.shape

    def predict(self, observation, **_):
        return np.zeros(self.shape, dtype=np.float32), None


def check(env_id: str, specs: list[str], seeds, distribution: InstanceDistribution | None = None,
          secret_key=None, **overrides) -> dict[str, np.ndarray]:
    """``{"action 0": metrics, spec: metrics, ...}``, one metric per proxy instance (seed); a
    ``secret_key`` makes the episodes reproducible (proxies are public, so a published key is safe)."""
    env = ProxyEnv(dp_gym.config_of(env_id, **overrides), distribution or InstanceDistribution(), secret_key=secret_key)
    controllers = {"action 0": ActionZero(env)}
    controllers.update({spec: controller_factory(spec, env_id)(env) for spec in specs})
    # one noise stream for all: with a key, every controller meets the same instance *and* noise on a seed
    return {name: np.array([run_episode(controller, env, seed, name, stream="").final_val_ppl for seed in seeds])
            for name, controller in controllers.items()}


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
    results = check(args.env, args.controllers, range(args.first_seed, args.first_seed + args.instances), distribution)
    reference = results["action 0"]
    print(f"| controller | mean relative vs action 0 | median | wins / {args.instances} | metric per instance |")
    print("|---|---:|---:|---:|---|")
    for name, metrics in results.items():
        relative = metrics / reference - 1
        print(f"| {name} | {100 * relative.mean():+.1f}% | {100 * np.median(relative):+.1f}% | "
              f"{int((relative < 0).sum())} | {' '.join(f'{m:.2f}' for m in metrics)} |")


if __name__ == "__main__":
    main()
