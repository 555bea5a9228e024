"""SAC vs TD3 vs PPO vs TQC vs the heuristics, on the same budget and seeds.

    python examples/compare_algorithms.py [--timesteps 300] [--seeds 3] [--max-updates 200]
"""

import argparse

import dp_gym
from agents.heuristics import make_controller
from agents.rl import algorithm, load_hyperparams
from dp_gym.evaluation import compare, markdown_table, summarize, write_report

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--timesteps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-updates", type=int, default=200)
    parser.add_argument("--algos", nargs="+", default=["sac", "td3", "ppo", "tqc"])
    parser.add_argument("--out", default="runs/examples/compare_algorithms")
    args = parser.parse_args()
    env_id, overrides = "dp_gym/TinyText-v0", {"max_updates": args.max_updates}

    controllers = {name: (lambda env, n=name: make_controller(n, env)) for name in ("vanilla", "adaptive_quantile")}
    for algo in args.algos:
        kwargs, zoo = load_hyperparams(algo, env_id)
        if "learning_starts" in kwargs:
            kwargs["learning_starts"] = min(kwargs["learning_starts"], args.timesteps // 2)
        if "n_steps" in kwargs:
            kwargs["n_steps"] = min(kwargs["n_steps"], args.timesteps)
            kwargs["batch_size"] = min(kwargs.get("batch_size", 64), kwargs["n_steps"])
        model = algorithm(algo)(zoo["policy"], dp_gym.make(env_id, **overrides), seed=0, **kwargs)
        model.learn(total_timesteps=args.timesteps)
        controllers[algo] = lambda env, m=model: m

    results = compare(controllers, lambda: dp_gym.make(env_id, **overrides), seeds=range(args.seeds))
    write_report(results, args.out)
    print(markdown_table(summarize(results)))
