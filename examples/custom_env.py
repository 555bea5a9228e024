"""Plug in your own DP environment: a new Task (model + data), a new reward, a new id.

    python examples/custom_env.py [--max-updates 40]
"""

import argparse
import random

import gymnasium as gym
import numpy as np

import dp_gym
from dp_gym.tasks import TextTask


# 1. A task: the tiny LM fine-tuned on private bank-transfer records (public validation: same
#    generator, another seed). Any causal LM folder works too: TextTask(model="path/to/model", ...).
def transfers(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = ["Ada", "Ben", "Chloe", "Dmitri", "Elena", "Farid"]
    return [f"{rng.choice(names)} sent {rng.randint(5, 999)} EUR to {rng.choice(names)} "
            f"on 2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} for {rng.choice(['rent', 'food', 'a loan'])}."
            for _ in range(n)]


class BankTransfersTask(TextTask):
    def __init__(self, n_train: int = 256, n_val: int = 32, seed: int = 0):
        super().__init__(train_records=transfers(n_train, 10 + seed), val_records=transfers(n_val, 99 + seed),
                         max_length=48)


# 2. A reward: validation improvement per unit of epsilon spent (pure function of public numbers).
def improvement_per_epsilon(context, scale: float = 1.0) -> float:
    spent = max(context.epsilon - context.epsilon_before, 1e-6)
    return scale * (context.val_loss_before - context.val_loss) / spent


dp_gym.register_task("bank_transfers", BankTransfersTask)
dp_gym.register_reward("improvement_per_epsilon", improvement_per_epsilon)

# 3. An id: the env is a DPFineTuneEnv with config fields as keyword arguments.
gym.register(
    id="my_lab/BankTransfers-v0",
    entry_point="dp_gym:DPFineTuneEnv",
    kwargs={"task": "bank_transfers", "epsilon": 2.0, "max_updates": 40, "updates_per_step": 4,
            "controls": {"clip": "control", "noise": "calibrated", "prune": 0.0},
            "reward": {"name": "improvement_per_epsilon", "kwargs": {"scale": 1.0}}},
    max_episode_steps=10,
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-updates", type=int, default=40)
    args = parser.parse_args()
    env = gym.make("my_lab/BankTransfers-v0", max_updates=args.max_updates,
                   max_episode_steps=-(-args.max_updates // 4))
    observation, info = env.reset(seed=0)
    print("action layout:", env.unwrapped.action_layout)
    done, total = False, 0.0
    while not done:
        action = np.zeros(env.action_space.shape, dtype=np.float32)  # clip = geometric middle of the range
        observation, reward, terminated, truncated, info = env.step(action)
        total += reward
        done = terminated or truncated
    print(f"val ppl {info['val_ppl']:.2f}, epsilon {info['epsilon']:.3f} / 2.0, return {total:.3f}")
