"""Train a SAC controller on dp_gym/TinyText-v0 and evaluate it against plain DP-SGD.

    python examples/train_sac.py [--total-timesteps 500] [--max-updates 200]
"""

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from stable_baselines3 import SAC

import dp_gym
from agents.heuristics import make_controller
from dp_gym.evaluation import run_episode


@dataclass
class Args:
    env_id: str = "dp_gym/TinyText-v0"
    total_timesteps: int = 500
    max_updates: int = 200
    seed: int = 0
    out: str = "runs/examples/train_sac"


def parse() -> Args:
    parser = argparse.ArgumentParser()
    for name, default in vars(Args()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    return Args(**vars(parser.parse_args()))


if __name__ == "__main__":
    args = parse()
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    make_env = lambda: dp_gym.make(args.env_id, max_updates=args.max_updates)  # noqa: E731
    env = make_env()
    model = SAC("MlpPolicy", env, learning_rate=1e-3, learning_starts=min(50, args.total_timesteps // 2),
                batch_size=128, gamma=0.95, gradient_steps=4, seed=args.seed, tensorboard_log=f"{args.out}/tb")
    model.learn(total_timesteps=args.total_timesteps, progress_bar=False)
    model.save(f"{args.out}/sac.zip")
    for name, controller in {"sac": model, "vanilla": make_controller("vanilla", env)}.items():
        result = run_episode(controller, env, seed=123, name=name)
        print(f"{name:8s} final val ppl {result.final_val_ppl:7.2f}  epsilon {result.epsilon:.3f}")
