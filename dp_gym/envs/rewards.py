"""Reward functions, selected by name: ``reward: {name: utility, kwargs: {...}}``.

A reward is ``fn(context: RewardContext, **kwargs) -> float``. Add one without touching the
package: ``dp_gym.register_reward("mine", my_fn)``, or name it by import path in a config
(``reward: {name: "mylab.rewards:ppl_minus_eps"}``). Rewards see only what the environment may
show a controller (public validation loss, epsilon spent), so they cost no privacy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dp_gym.utils.registry import Registry


@dataclass(frozen=True)
class RewardContext:
    """What a reward may read after one environment step.

    Losses are public-validation mean per-token losses (log-perplexities).
    """

    val_loss_base: float  # before the episode's first update
    val_loss_before: float  # before this step
    val_loss: float  # after this step
    epsilon_before: float
    epsilon: float
    epsilon_budget: float
    updates: int
    max_updates: int
    terminal: bool  # the episode ends with this step (budget spent or max_updates reached)


RewardFn = Callable[..., float]


REWARDS: Registry[RewardFn] = Registry("reward", callable_only=True)


def register_reward(name: str, fn: RewardFn, force: bool = False) -> None:
    """Register ``fn`` under ``name``; a duplicate raises unless ``force``."""
    REWARDS.register(name, fn, force=force)


def registered_rewards() -> list[str]:
    return REWARDS.names()


def get_reward(name: str) -> RewardFn:
    """The reward registered as ``name``, or imported from ``"module:function"``."""
    return REWARDS.get(name)


def utility_reward(c: RewardContext, scale: float = 10.0, privacy_cost: float = 0.05,
                   terminal_weight: float = 1.0) -> float:
    r"""Improvement of public log-perplexity, minus the epsilon it cost, plus a final-utility term.

    .. math:: r_t = s (\ell_{t-1} - \ell_t) - \lambda \frac{\epsilon_t - \epsilon_{t-1}}{\epsilon_{budget}}
              + [\text{terminal}]\, w\, s (\ell_0 - \ell_T)

    The first term telescopes: over an episode it sums to ``s (l_0 - l_T)``.
    """
    reward = scale * (c.val_loss_before - c.val_loss)
    reward -= privacy_cost * (c.epsilon - c.epsilon_before) / c.epsilon_budget
    if c.terminal:
        reward += terminal_weight * scale * (c.val_loss_base - c.val_loss)
    return float(reward)


def final_only_reward(c: RewardContext, scale: float = 10.0) -> float:
    """Zero until the last step, then ``s (l_0 - l_T)``: the sparse version of ``utility``."""
    return float(scale * (c.val_loss_base - c.val_loss)) if c.terminal else 0.0


def lagrangian_reward(c: RewardContext, scale: float = 10.0, multiplier: float = 5.0) -> float:
    r"""Utility improvement minus a penalty for spending ahead of a linear pacing schedule.

    .. math:: r_t = s (\ell_{t-1} - \ell_t) - \mu \max(0, \epsilon_t/\epsilon_{budget} - u_t/u_{max})
    """
    overspend = max(0.0, c.epsilon / c.epsilon_budget - c.updates / c.max_updates)
    return float(scale * (c.val_loss_before - c.val_loss) - multiplier * overspend)


register_reward("utility", utility_reward)
register_reward("final_only", final_only_reward)
register_reward("lagrangian", lagrangian_reward)
