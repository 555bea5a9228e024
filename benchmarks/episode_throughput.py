"""Episodes per hour for controller training: the private preset against its public proxies, one
and two environment processes, and what torch's default threads cost when two processes share 2 cores.

Rows, side by side in one run (the same zero action, i.e. plain DP-SGD at the middle clip):

* ``dp_gym/TinyText-v0`` itself (private data, 200 updates of batch ~26 x 96 tokens);
* its public proxy instances (``ProxyEnv``, the default ``InstanceDistribution``: 512 or 1024
  records at sample rate 0.01 or 0.02, batch 5 to 20, 48 tokens; the deployment's noise-to-signal
  regime), one process;
* the proxies in 2 processes (``SubprocVecEnv``), one torch thread each (dp-gym's policy);
* the proxies in 2 processes with torch's default threads (one per core in each: oversubscribed);
* the session-5 proxies (128 or 256 records at 0.02 or 0.05: batch 3 to 13, twice as noisy as the
  deployment), 1 and 2 processes: what covering the deployment's regime costs;
* the default proxies on a tiny model of half the width (``tiny_shapes: [{n_embd: 48}]``: the same
  parameter groups and layouts, a quarter of the block weights), 1 and 2 processes.

    python benchmarks/episode_throughput.py [--episodes 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
from stable_baselines3.common.vec_env import SubprocVecEnv

import dp_gym
from agents.rl import EnvFactory
from dp_gym.envs import InstanceDistribution, ProxyEnv
from dp_gym.utils.quiet import quiet_libraries
from dp_gym.utils.threads import available_cores, configure_threads


def one_process(env, episodes: int) -> tuple[float, float]:
    """(episodes per hour, mean steps per episode) of ``episodes`` zero-action episodes."""
    steps, start = 0, time.perf_counter()
    for episode in range(episodes):
        env.reset(seed=episode)
        done = False
        while not done:
            *_, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
            steps += 1
            done = terminated or truncated
    wall = time.perf_counter() - start
    return episodes / wall * 3600, steps / episodes


def processes(factory: EnvFactory, n_envs: int, episodes: int) -> float:
    """Episodes per hour of ``n_envs`` processes until ``episodes`` episodes have finished."""
    envs = SubprocVecEnv([factory] * n_envs)
    envs.reset()
    finished, start = 0, time.perf_counter()
    while finished < episodes:
        _, _, dones, _ = envs.step(np.zeros((n_envs, *envs.action_space.shape), dtype=np.float32))
        finished += int(dones.sum())
    wall = time.perf_counter() - start
    envs.close()
    return finished / wall * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=6, help="proxy episodes per row")
    parser.add_argument("--private-episodes", type=int, default=2)
    args = parser.parse_args()
    quiet_libraries()
    cores = available_cores()
    configure_threads(cores)
    distribution = InstanceDistribution()
    rows = []
    private = dp_gym.make("dp_gym/TinyText-v0")
    rate, steps = one_process(private, args.private_episodes)
    rows.append(("dp_gym/TinyText-v0 (private)", 1, cores, rate, steps))
    proxy = ProxyEnv(dp_gym.config_of("dp_gym/TinyText-v0"), distribution)
    rate, steps = one_process(proxy, args.episodes)
    rows.append(("its public proxies", 1, cores, rate, steps))
    for threads in (1, None):
        factory = EnvFactory("dp_gym/TinyText-v0", {}, None, distribution, threads=threads, monitor=False)
        rows.append(("its public proxies", 2, threads or cores, processes(factory, 2, args.episodes), steps))
    old = InstanceDistribution(sample_rates=(0.02, 0.05), train_sizes=(128, 256))
    rate, old_steps = one_process(ProxyEnv(dp_gym.config_of("dp_gym/TinyText-v0"), old), args.episodes)
    rows.append(("session-5 proxies (twice as noisy)", 1, cores, rate, old_steps))
    factory = EnvFactory("dp_gym/TinyText-v0", {}, None, old, threads=1, monitor=False)
    rows.append(("session-5 proxies (twice as noisy)", 2, 1, processes(factory, 2, args.episodes), old_steps))
    narrow = dataclasses.replace(distribution, tiny_shapes=({"n_embd": 48},))
    rate, narrow_steps = one_process(ProxyEnv(dp_gym.config_of("dp_gym/TinyText-v0"), narrow), args.episodes)
    rows.append(("its public proxies, half-width model", 1, cores, rate, narrow_steps))
    factory = EnvFactory("dp_gym/TinyText-v0", {}, None, narrow, threads=1, monitor=False)
    rows.append(("its public proxies, half-width model", 2, 1, processes(factory, 2, args.episodes), narrow_steps))
    base = rows[0][3]
    print(f"\n{cores} cores; zero action; episodes per hour (x the private preset)\n")
    print("| environment | processes | torch threads each | episodes / hour | x TinyText-v0 | steps / episode |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n_envs, threads, rate, steps in rows:
        print(f"| {name} | {n_envs} | {threads} | {rate:.0f} | {rate / base:.1f} | {steps:.0f} |")


if __name__ == "__main__":
    main()
