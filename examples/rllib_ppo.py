"""Train RLlib's PPO (new API stack) on a dp-gym environment.

Shows how to plug dp-gym into RLlib: register an env creator with ``ray.tune.register_env``, build a
small ``PPOConfig`` (sampling on the local EnvRunner, a [64, 64] MLP) and call ``algo.train()``.
RLlib is an optional extra (``pip install 'dp-gym[rllib]'``; it pins its own Gymnasium version, so
keep it in a separate virtual environment, e.g. ``.venv-rllib``)::

    OMP_NUM_THREADS=1 .venv-rllib/bin/python examples/rllib_ppo.py --iterations 1 --max-updates 40

The privacy budget is per episode: an RL library trains on many episodes, and every episode of a
private environment spends its own budget on the private data. So the default environment is the
public proxy ``dp_gym/TinyTextFlatProxy-v0`` of ``dp_gym/TinyTextFlat-v0`` (every episode draws a
public proxy instance: public data, a random budget; see ``dp_gym/envs/proxy.py``): RLlib trains on
public data only; a policy trained on proxies then runs one episode on the private id.
``dp_gym.list_proxy_envs()`` lists the proxy ids.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)

import gymnasium as gym  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from ray.rllib.algorithms.ppo import PPOConfig  # noqa: E402
from ray.tune import register_env  # noqa: E402

ENV_NAME = "dp_gym_env"


def make_env(env_config: dict[str, Any]) -> gym.Env:
    """RLlib's env creator (runs in every EnvRunner): ``{"env_id": ..., "overrides": {...}}``."""
    torch.set_num_threads(1)
    import dp_gym
    from dp_gym.utils.quiet import quiet_libraries

    quiet_libraries()  # no weight-loading bars from transformers

    env_id, overrides = env_config["env_id"], dict(env_config.get("overrides", {}))
    if env_id in dp_gym.list_proxy_envs():  # a proxy id takes config overrides plus ``proxy={...}``
        return gym.make(env_id, **overrides)
    return dp_gym.make(env_id, **overrides)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dp_gym/TinyTextFlatProxy-v0", help="a dp-gym id (default: a public proxy)")
    parser.add_argument("--iterations", type=int, default=1, help="algo.train() calls")
    parser.add_argument("--max-updates", type=int, default=40, help="env override: DP-SGD updates per episode")
    parser.add_argument("--env-config", type=json.loads, default={},
                        help='more env overrides as JSON, e.g. \'{"updates_per_step": 2, "proxy": {"train_sizes": [32]}}\'')
    parser.add_argument("--train-batch-size", type=int, default=40, help="env steps sampled per iteration")
    parser.add_argument("--num-env-runners", type=int, default=0, help="0: sample on the local EnvRunner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local one)")
    parser.add_argument("--out", default=None, help="folder for a checkpoint of the trained algorithm")
    return parser.parse_args()


def build_config(args: argparse.Namespace) -> PPOConfig:
    overrides = {"max_updates": args.max_updates, **args.env_config}
    return (
        PPOConfig()
        .environment(ENV_NAME, env_config={"env_id": args.env, "overrides": overrides})
        .env_runners(num_env_runners=args.num_env_runners, num_cpus_per_env_runner=1)
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=args.train_batch_size,
                  minibatch_size=min(32, args.train_batch_size), num_epochs=4, lr=3e-4, gamma=0.95)
        .rl_module(model_config={"fcnet_hiddens": [64, 64]})
        .debugging(seed=args.seed, log_level="ERROR")
    )


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    logging.getLogger("ray.rllib").setLevel(logging.ERROR)  # e.g. "You are running PPO on the new API stack!"
    register_env(ENV_NAME, make_env)
    if args.address:
        ray.init(address=args.address, logging_level=logging.ERROR)
    else:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    algo = build_config(args).build_algo()
    try:
        for iteration in range(1, args.iterations + 1):
            runners = algo.train()["env_runners"]
            mean = runners.get("episode_return_mean", float("nan"))
            print(f"iteration {iteration}: episode return mean {mean:.3f}  "
                  f"episodes {int(runners.get('num_episodes_lifetime', 0))}  "
                  f"env steps sampled {int(runners.get('num_env_steps_sampled_lifetime', 0))}", flush=True)
        if args.out:
            print(f"checkpoint saved to {algo.save_to_path(os.path.abspath(args.out))}")
    finally:
        algo.stop()
        ray.shutdown()
    print(f"rllib iterations done: {args.iterations} on {args.env}")


if __name__ == "__main__":
    main()
