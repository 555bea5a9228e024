"""Single-file SAC (CleanRL style) over ``gymnasium.make_vec`` on dp_gym/TinyText-v0.

Gymnasium 1.x vector envs autoreset in NEXT_STEP mode: after a sub-env finishes, its *next*
``step`` call ignores the action and returns the first observation of a new episode (reward 0).
That step is not a transition, so it must not enter the replay buffer; this file skips it.

    python examples/cleanrl_style_sac.py [--total-timesteps 400] [--num-envs 2] [--max-updates 200]
"""

import argparse
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import dp_gym  # noqa: F401  (registers the ids)


@dataclass
class Args:
    env_id: str = "dp_gym/TinyText-v0"
    total_timesteps: int = 400
    num_envs: int = 2
    max_updates: int = 200
    seed: int = 0
    buffer_size: int = 20_000
    batch_size: int = 128
    learning_starts: int = 50
    gamma: float = 0.95
    tau: float = 0.02
    lr: float = 1e-3


def parse() -> Args:
    parser = argparse.ArgumentParser()
    for name, default in vars(Args()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    return Args(**vars(parser.parse_args()))


def mlp(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, outputs))


class Actor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.body = mlp(obs_dim, 2 * act_dim)

    def forward(self, obs):
        mean, log_std = self.body(obs).chunk(2, dim=-1)
        std = log_std.clamp(-5, 2).exp()
        raw = mean + std * torch.randn_like(mean)
        action = torch.tanh(raw)  # actions live in [-1, 1], like the env's Box
        log_prob = (torch.distributions.Normal(mean, std).log_prob(raw) - torch.log(1 - action.pow(2) + 1e-6)).sum(-1)
        return action, log_prob, torch.tanh(mean)


if __name__ == "__main__":
    args = parse()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    envs = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="sync",
                        max_updates=args.max_updates, max_episode_steps=-(-args.max_updates // 4))
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    actor, q1, q2 = Actor(obs_dim, act_dim), mlp(obs_dim + act_dim, 1), mlp(obs_dim + act_dim, 1)
    q1_target, q2_target = mlp(obs_dim + act_dim, 1), mlp(obs_dim + act_dim, 1)
    q1_target.load_state_dict(q1.state_dict())
    q2_target.load_state_dict(q2.state_dict())
    q_optimizer = torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=args.lr)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.lr)
    log_alpha = torch.zeros(1, requires_grad=True)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.lr)
    target_entropy = -float(act_dim)
    buffer = {k: np.zeros((args.buffer_size, d), np.float32)
              for k, d in (("obs", obs_dim), ("act", act_dim), ("rew", 1), ("next", obs_dim), ("done", 1))}
    size, episode_returns = 0, []

    obs, _ = envs.reset(seed=args.seed)
    autoreset = np.zeros(args.num_envs, dtype=bool)  # True: this sub-env's next step is a reset
    returns = np.zeros(args.num_envs)
    for step in range(0, args.total_timesteps, args.num_envs):
        if step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                actions = actor(torch.as_tensor(obs, dtype=torch.float32))[0].numpy()
        next_obs, rewards, terminated, truncated, infos = envs.step(actions)
        for i in range(args.num_envs):
            if autoreset[i]:  # NEXT_STEP autoreset: not a transition
                continue
            index = size % args.buffer_size
            buffer["obs"][index], buffer["act"][index], buffer["rew"][index] = obs[i], actions[i], rewards[i]
            buffer["next"][index], buffer["done"][index] = next_obs[i], terminated[i]  # bootstrap through truncation
            size += 1
            returns[i] += rewards[i]
            if terminated[i] or truncated[i]:
                episode_returns.append(returns[i])
                print(f"step {step}: episode return {returns[i]:.3f}, val ppl {infos['val_ppl'][i]:.2f}, "
                      f"epsilon {infos['epsilon'][i]:.3f}")
                returns[i] = 0.0
        autoreset = terminated | truncated
        obs = next_obs

        if size >= args.learning_starts:
            batch_index = np.random.randint(0, min(size, args.buffer_size), args.batch_size)
            b = {k: torch.as_tensor(v[batch_index]) for k, v in buffer.items()}
            alpha = log_alpha.exp().detach()
            with torch.no_grad():
                next_action, next_log_prob, _ = actor(b["next"])
                pair = torch.cat([b["next"], next_action], -1)
                target = torch.min(q1_target(pair), q2_target(pair)).squeeze(-1) - alpha * next_log_prob
                target = b["rew"].squeeze(-1) + args.gamma * (1 - b["done"].squeeze(-1)) * target
            pair = torch.cat([b["obs"], b["act"]], -1)
            q_loss = F.mse_loss(q1(pair).squeeze(-1), target) + F.mse_loss(q2(pair).squeeze(-1), target)
            q_optimizer.zero_grad()
            q_loss.backward()
            q_optimizer.step()
            action, log_prob, _ = actor(b["obs"])
            pair = torch.cat([b["obs"], action], -1)
            actor_loss = (alpha * log_prob - torch.min(q1(pair), q2(pair)).squeeze(-1)).mean()
            actor_optimizer.zero_grad()
            actor_loss.backward()
            actor_optimizer.step()
            alpha_loss = -(log_alpha * (log_prob.detach() + target_entropy)).mean()
            alpha_optimizer.zero_grad()
            alpha_loss.backward()
            alpha_optimizer.step()
            with torch.no_grad():
                for net, target_net in ((q1, q1_target), (q2, q2_target)):
                    for p, tp in zip(net.parameters(), target_net.parameters(), strict=True):
                        tp.mul_(1 - args.tau).add_(args.tau * p)
    envs.close()
    print(f"done: {size} transitions, {len(episode_returns)} episodes")
