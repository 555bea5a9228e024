"""Scaling a sweep and an environment over the cores of one machine, side by side in one run.

Table 1: the wall time of a 2 x 2 sweep (``vanilla`` and ``adaptive_quantile``, 2 seeds each, on
``--env``) through ``dp_gym.utils.backends``:

* ``local``, one process (torch threads: all cores);
* ``local``, 2 worker processes, one thread each;
* ``ray``, one Ray Tune trial per deployment (``{"CPU": 1}`` each) on a local Ray instance; Ray's
  start-up is timed on its own row.

Every backend runs the same four deployments with the same secret key, drawn fresh for this run and
held in memory only; the table says whether their results agree (they must).

Table 2: environment steps per second of ``--env`` with 1 and 2 environments, Gymnasium's
``SyncVectorEnv`` (one process) and ``AsyncVectorEnv`` (one process per environment, one torch thread
each), the zero action (plain DP-SGD at the middle clip).

    python benchmarks/scaling.py [--env dp_gym/TinyTextFlat-v0] [--steps 10] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import time

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.table import Table

import dp_gym
from agents.controllers import deploy
from dp_gym.utils.backends import LocalBackend, RayBackend
from dp_gym.utils.quiet import quiet_libraries
from dp_gym.utils.threads import available_cores, configure_threads

CONTROLLERS = {"vanilla": "vanilla", "adaptive_quantile": "adaptive_quantile"}


def time_sweep(backend, env_id: str, overrides: dict) -> tuple[float, list]:
    start = time.perf_counter()
    results = deploy(backend, env_id, CONTROLLERS, [0, 1], overrides)
    return time.perf_counter() - start, results


def same(a: list, b: list) -> bool:
    return [(r.controller, r.seed, r.final_val_ppl, r.epsilon) for r in a] == [
        (r.controller, r.seed, r.final_val_ppl, r.epsilon) for r in b]


def _one_thread_env(env_id: str, overrides: dict):
    def make():
        configure_threads(1)
        quiet_libraries()
        return dp_gym.make(env_id, **overrides)
    return make


def env_steps_per_second(env_id: str, overrides: dict, n_envs: int, mode: str, steps: int) -> float:
    """Sync: every environment in this process, on all its threads; async: a process per
    environment, one thread each."""
    if mode == "sync":
        vector = gym.vector.SyncVectorEnv([lambda: dp_gym.make(env_id, **overrides)] * n_envs)
    else:
        vector = gym.vector.AsyncVectorEnv([_one_thread_env(env_id, overrides)] * n_envs, context="spawn")
    vector.reset(seed=list(range(n_envs)))
    action = np.zeros(vector.action_space.shape, dtype=np.float32)
    vector.step(action)  # warm-up: first update builds the per-sample machinery
    start = time.perf_counter()
    for _ in range(steps):
        vector.step(action)
    wall = time.perf_counter() - start
    vector.close()
    return n_envs * steps / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dp_gym/TinyTextFlat-v0")
    parser.add_argument("--env-overrides", default="{}", help="JSON config overrides for every episode")
    parser.add_argument("--steps", type=int, default=10, help="timed vector steps per environment row")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray rows")
    parser.add_argument("--out", default="runs/bench/scaling", help="Ray Tune's experiment folder")
    args = parser.parse_args()
    overrides = json.loads(args.env_overrides)
    quiet_libraries()
    cores = configure_threads()
    # a secret key for this run only, never written: the backends must give the same rows
    os.environ["DP_GYM_SECRET_KEY"] = secrets.token_hex(16)
    console = Console(width=120)

    sweep = Table(title=f"a 2 x 2 sweep (2 controllers x 2 seeds) on {args.env}, {available_cores()} cores")
    for column in ("backend", "workers", "wall s", "vs local, 1 process", "same rows"):
        sweep.add_column(column, justify="right" if column != "backend" else "left")
    base_wall, base = time_sweep(LocalBackend(), args.env, overrides)
    sweep.add_row("local", f"1 process, {cores} threads", f"{base_wall:.1f}", "1.00x", "-")
    wall, results = time_sweep(LocalBackend(workers=2), args.env, overrides)
    sweep.add_row("local", "2 processes, 1 thread", f"{wall:.1f}", f"{wall / base_wall:.2f}x",
                  "yes" if same(base, results) else "NO")
    if not args.no_ray:
        import ray

        shutil.rmtree(args.out, ignore_errors=True)  # a fresh experiment, not a resumed one
        start = time.perf_counter()
        ray.init(num_cpus=available_cores(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        started = time.perf_counter() - start
        sweep.add_row("ray start-up", "", f"{started:.1f}", "", "")
        wall, results = time_sweep(RayBackend(args.out, resources={"CPU": 1}), args.env, overrides)
        sweep.add_row("ray", "2 trials, 1 CPU each", f"{wall:.1f}", f"{wall / base_wall:.2f}x",
                      "yes" if same(base, results) else "NO")
        sweep.add_row("ray incl. start-up", "", f"{wall + started:.1f}", f"{(wall + started) / base_wall:.2f}x", "")
        ray.shutdown()
    console.print(sweep)

    table = Table(title=f"environment steps per second on {args.env} ({args.steps} vector steps, zero action; "
                        f"sync: {cores} threads in one process, async: 1 thread per process)")
    for column in ("envs", "vectorization", "env steps/s", "vs 1 env, sync"):
        table.add_column(column, justify="right")
    rates = {}
    for n_envs, mode in ((1, "sync"), (2, "sync"), (1, "async"), (2, "async")):
        rates[n_envs, mode] = env_steps_per_second(args.env, overrides, n_envs, mode, args.steps)
        table.add_row(str(n_envs), mode, f"{rates[n_envs, mode]:.2f}", f"{rates[n_envs, mode] / rates[1, 'sync']:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
