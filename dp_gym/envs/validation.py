"""Checks of the names in a config that live in registries: run when an environment is built,
before any model or data is, so a typo is a :class:`~dp_gym.config.ConfigError` naming the key and
what is allowed, not a traceback from deep inside a task or a failure at the first ``step()``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from dp_gym.config import ConfigError, EnvConfig
from dp_gym.envs.rewards import get_reward
from dp_gym.models.token_pruning import check_rule
from dp_gym.tasks import resolve_task


def _keywords(function: Callable, skip: int) -> list[str] | None:
    """The keyword names ``function`` accepts after its first ``skip`` parameters (None: any, via **kwargs)."""
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                     inspect.Parameter.KEYWORD_ONLY)]


def _check_keywords(field: str, given: dict, allowed: list[str] | None, owner: str) -> None:
    if allowed is None:
        return
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"{field} has unknown key(s) {unknown} for {owner}; allowed: {sorted(allowed)}")


def validate_config(config: EnvConfig) -> EnvConfig:
    """Check the task, its keyword arguments, the token-pruning rule, the reward and its keyword
    arguments against their registries; returns the config.

    Raises:
        ConfigError: naming the field, the value and the allowed values.
    """
    try:
        task = resolve_task(config.task)
    except ValueError as error:
        raise ConfigError(f"task: {error}") from None
    task_keywords = _keywords(task.__init__, skip=1)
    _check_keywords("task_kwargs", config.task_kwargs, task_keywords, f"task {config.task!r}")
    if config.token_pruning is not None:
        if task_keywords is not None and "token_pruning" not in task_keywords:
            raise ConfigError(f"token_pruning: task {config.task!r} has no visual tokens to prune (it takes no "
                              "token_pruning)")
        try:
            check_rule(config.token_pruning["rule"], "token_pruning.rule")
        except ValueError as error:
            raise ConfigError(str(error)) from None
    try:
        reward = get_reward(config.reward["name"])
    except ValueError as error:
        raise ConfigError(f"reward.name: {error}") from None
    _check_keywords("reward.kwargs", config.reward.get("kwargs", {}), _keywords(reward, skip=1),
                    f"reward {config.reward['name']!r}")
    return config
