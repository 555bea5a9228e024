"""Plug in your own DP environment: your records, a reward of your own, an id of your own.

The simplest plug-in needs no subclass: the ``text`` task takes your private training records and
public validation records. A new reward is a function of the public ``RewardContext``. The id is a
plain ``gymnasium.register``; put it in a module and every dp-gym command takes it
(``dp-gym train --env my_lab/BankTransfers-v0 --gym-packages my_module``).

    python examples/custom_env.py [--max-updates 40]
"""

import argparse
import random

import gymnasium as gym
import numpy as np

import dp_gym


# 1. Data: private records (here generated bank transfers) and public validation records.
def transfers(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = ["Ada", "Ben", "Chloe", "Dmitri", "Elena", "Farid"]
    return [f"{rng.choice(names)} sent {rng.randint(5, 999)} EUR to {rng.choice(names)} "
            f"on 2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} for {rng.choice(['rent', 'food', 'a loan'])}."
            for _ in range(n)]


# 2. A reward: validation improvement per unit of epsilon spent (a function of public numbers only).
def improvement_per_epsilon(context, scale: float = 1.0) -> float:
    spent = max(context.epsilon - context.epsilon_before, 1e-6)
    return scale * (context.val_loss_before - context.val_loss) / spent


dp_gym.register_reward("improvement_per_epsilon", improvement_per_epsilon)

# 3. An id: the env is a DPFineTuneEnv; its config names the task, the records and the reward.
#    (Any causal LM folder works too: task_kwargs={"model": "path/to/model", ...}.)
gym.register(
    id="my_lab/BankTransfers-v0",
    entry_point="dp_gym:DPFineTuneEnv",
    kwargs={"config": {
        "task": "text",
        "task_kwargs": {"train_records": transfers(256, seed=10), "val_records": transfers(32, seed=99),
                        "max_length": 48},
        "epsilon": 2.0, "max_updates": 40, "updates_per_step": 4,
        "controls": {"clip": "control", "noise": "calibrated", "prune": 0.0},
        "reward": {"name": "improvement_per_epsilon", "kwargs": {"scale": 1.0}}}},
    max_episode_steps=10,
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-updates", type=int, default=40)
    args = parser.parse_args()
    env = dp_gym.make("my_lab/BankTransfers-v0", max_updates=args.max_updates)  # keeps the time limit consistent
    observation, info = env.reset(seed=0)
    print("action layout:", env.unwrapped.action_layout)
    done, total = False, 0.0
    while not done:
        action = np.zeros(env.action_space.shape, dtype=np.float32)  # clip = geometric middle of the range
        observation, reward, terminated, truncated, info = env.step(action)
        total += reward
        done = terminated or truncated
    print(f"val ppl {info['val_ppl']:.2f}, epsilon {info['epsilon']:.3f} / 2.0, return {total:.3f}")
