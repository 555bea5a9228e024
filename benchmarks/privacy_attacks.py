"""How much do fine-tuned models leak? Non-private vs vanilla DP-SGD vs a SAC controller at epsilon 1, 3, 8.

On dp_gym/TinyText-v0 with 8 canaries inserted 4 times each: canary exposure (bits; 999 sampled
candidates per canary, so at most 9.97), membership inference AUC (loss attack and the reference
attack with the public base model) and TPR at 1% FPR, and the one-run audit's epsilon lower bound
(256 random-token canaries, 95% confidence) for the same controller. "non-private" is the same
DP-SGD run with the gradient noise removed (clipping kept): its ledger epsilon is what the
controller asked for, and is false.

    python benchmarks/privacy_attacks.py [--epsilons 1 3 8] [--sac-timesteps 250] [--clip 0.1] [--out runs/bench/privacy]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dp_gym
from agents.heuristics import make_controller
from agents.rl import load_policy, train
from dp_gym.evaluation import one_run_audit, privacy_attacks, run_episode
from dp_gym.evaluation.audit import _drop_gradient_noise

CANARIES = {"n_canaries": 8, "canary_repeats": 4}


class NoNoise:
    """Vanilla DP-SGD's action, with the environment's gradient noise removed after each reset."""

    def __init__(self, env, clip: float):
        self.env = env.unwrapped
        self.inner = make_controller("vanilla", env, clip=clip)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        if self.env.run.updates == 0 and not getattr(self.env.run.updater, "_noise_dropped", False):
            _drop_gradient_noise(self.env.run.updater)
            self.env.run.updater._noise_dropped = True
        return self.inner.predict(observation, state, episode_start, deterministic)


def attack_row(name: str, epsilon: float, make_policy, clip: float, seed: int, broken: str | None = None) -> dict:
    base = dp_gym.config_of("dp_gym/TinyText-v0", epsilon=epsilon)
    env = dp_gym.make("dp_gym/TinyText-v0", epsilon=epsilon, task_kwargs={**base.task_kwargs, **CANARIES})
    policy = make_policy(env)
    result = run_episode(policy, env, seed, name,
                         after=lambda e: privacy_attacks(e.unwrapped.run.model, e.unwrapped.task, n_candidates=999))
    env.close()
    audit = one_run_audit(base, None if name != "sac" else make_policy, n_canaries=256, seed=seed, broken=broken,
                          clip=clip)
    return {"controller": name, "epsilon_budget": epsilon, "epsilon_reported": result.epsilon,
            "val_ppl": result.final_val_ppl, **{k: v for k, v in result.attacks.items() if k != "exposures"},
            "epsilon_lower_bound": audit.epsilon_lower_bound, "audit": audit.to_dict(),
            "privacy_valid": broken is None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--sac-timesteps", type=int, default=250)
    parser.add_argument("--clip", type=float, default=0.1, help="vanilla's clip (tuned: see controller_utility)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--out", default="runs/bench/privacy")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sac_path = train("dp_gym/TinyText-v0", "sac", args.sac_timesteps, seed=0, out=out / "sac", progress_bar=False,
                     checkpoint_every=max(args.sac_timesteps // 2, 1))
    rows = []
    for epsilon in args.epsilons:
        specs = [("non-private (no noise)", lambda env: NoNoise(env, args.clip), "no_noise"),
                 ("vanilla", lambda env: make_controller("vanilla", env, clip=args.clip), None),
                 ("sac", lambda env: load_policy(f"sac:{sac_path}"), None)]
        for name, factory, broken in specs:
            row = attack_row(name, epsilon, factory, args.clip, args.seed, broken)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "audit"}), flush=True)
    (out / "privacy_attacks.json").write_text(json.dumps(rows, indent=1))
    print("\n| epsilon | controller | val ppl | epsilon reported | exposure mean / max (bits, cap 9.97) | "
          "MIA AUC loss | MIA AUC ref | TPR@1%FPR ref | audited epsilon lower bound |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['epsilon_budget']:g} | {r['controller']} | {r['val_ppl']:.1f} | {r['epsilon_reported']:.3f}"
              f"{'' if r['privacy_valid'] else ' (false)'} | {r['exposure_mean']:.2f} / {r['exposure_max']:.2f} | "
              f"{r['mia_loss_auc']:.3f} | {r['mia_reference_auc']:.3f} | {r['mia_reference_tpr_at_1pct_fpr']:.3f} | "
              f"{r['epsilon_lower_bound']:.3f} |")


if __name__ == "__main__":
    main()
