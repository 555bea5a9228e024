"""The epsilon cost of the pinned-order Rényi filter on the registered environments.

An adaptive controller's run is accounted at one RDP order fixed at reset (the order at which
plain DP-SGD's calibrated plan has its smallest epsilon; see ``dp_gym.privacy.PrivacyBudget``).
The minimum over orders, which the ledger reported before, is not a valid stopping rule under full
adaptivity. This script shows what the valid rule costs: for schedules that keep a constant factor
``f`` on the calibrated noise for all ``max_updates`` updates, the epsilon at the pinned order
against the (smaller, here invalid) minimum over orders, and how many updates each rule lets the
schedule run within the budget.

    python benchmarks/filter_cost.py
"""

from __future__ import annotations

import argparse

import dp_gym
from dp_gym.config import EnvConfig
from dp_gym.privacy import PrivacyBudget, PrivacyLedger, ReleasedStatistics
from dp_gym.privacy.rdp import epsilon_at_order, sampled_gaussian_rdp


def groups_of(config: EnvConfig) -> int:
    """Parameter groups of the env's model, without building it (the tiny models' known counts)."""
    if config.grouping == "global":
        return 1
    return 5 if config.task == "text" else 6  # per block: embeddings, 3 blocks, head (+ projector for vision)


def updates_that_fit(budget: PrivacyBudget, z: float, min_over_orders: bool) -> int:
    per_step_min = PrivacyLedger(budget.delta)
    count = 0
    while count < budget.max_updates:
        if min_over_orders:
            if per_step_min.epsilon_if(z, budget.sample_rate, 1) > budget.epsilon:
                break
            per_step_min.record(z, budget.sample_rate, 1)
        else:
            if not budget.fits(z, 1):
                break
            budget.record(z, 1)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", type=float, nargs="+", default=[0.7, 0.85, 1.0, 1.25, 2.0])
    args = parser.parse_args()
    print("| env | epsilon / updates / q | filter order | noise factor f | epsilon, min over orders | "
          "epsilon, pinned order | cost | updates within budget: min over orders / pinned |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    seen = set()
    for env_id in dp_gym.list_envs():
        config = dp_gym.config_of(env_id)
        if not config.adaptive_noise:
            continue  # noise fixed in advance: plain composition, no filter
        key = (config.epsilon, config.delta, config.sample_rate, config.max_updates, config.grouping, config.task)
        if key in seen:
            continue
        seen.add(key)
        n_groups = groups_of(config)
        statistics = ReleasedStatistics(config.count_noise, n_groups if config.count_noise else 0, config.loss_noise)
        reference = PrivacyBudget(config.epsilon, config.delta, config.sample_rate, config.max_updates, n_groups,
                                  statistics)
        for factor in args.factors:
            sigmas = factor * reference.calibrated_sigmas()
            z = reference.composed_noise_multiplier(sigmas)
            ledger = PrivacyLedger(config.delta)
            ledger.record(z, config.sample_rate, config.max_updates)
            pinned_rdp = float(sampled_gaussian_rdp(z, config.sample_rate, [reference.filter_order])[0])
            pinned = epsilon_at_order(pinned_rdp * config.max_updates, reference.filter_order, config.delta)
            fit_min = updates_that_fit(reference, z, min_over_orders=True)
            fit_pinned = updates_that_fit(PrivacyBudget(config.epsilon, config.delta, config.sample_rate,
                                                        config.max_updates, n_groups, statistics), z, False)
            print(f"| {env_id} | {config.epsilon:g} / {config.max_updates} / {config.sample_rate:g} | "
                  f"{reference.filter_order:g} | {factor:g} | {ledger.epsilon():.3f} | {pinned:.3f} | "
                  f"{pinned - ledger.epsilon():+.3f} | {fit_min} / {fit_pinned} |")


if __name__ == "__main__":
    main()
