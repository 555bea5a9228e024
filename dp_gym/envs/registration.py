"""Environment ids under the ``dp_gym/`` namespace, one YAML in ``envs_configs/`` each.

Gymnasium 1.x has no plugin entry points, so ``import dp_gym`` registers them. The YAML's
``id`` names the environment, ``description`` is the one line ``list_envs`` prints, and every
other key is an :class:`EnvConfig` field.

``max_episode_steps`` is registered as ``ceil(max_updates / updates_per_step)`` of the YAML. When
you override either with ``gymnasium.make(id, max_updates=...)``, also pass
``max_episode_steps=...`` (or use :func:`make`, which does it for you); the environment
truncates at ``max_updates`` on its own regardless.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml

from dp_gym.config import EnvConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "envs_configs"
_REGISTERED: dict[str, tuple[Path, str]] = {}


def make_registered(config_path: str, secret_key=None, **overrides: Any):
    """Gymnasium entry point: build the environment of a YAML with overrides (and an optional
    secret key, which is never part of the config)."""
    from dp_gym.envs.dp_finetune_env import DPFineTuneEnv

    return DPFineTuneEnv(EnvConfig.from_yaml(config_path, **overrides), secret_key=secret_key)


def make_from_config(path: str | Path, **overrides: Any):
    """Build a (TimeLimit-free) environment straight from a YAML file; it truncates itself."""
    return make_registered(str(path), **overrides)


def episode_steps(config: dict[str, Any]) -> int:
    defaults = EnvConfig.__dataclass_fields__
    max_updates = config.get("max_updates", defaults["max_updates"].default)
    per_step = config.get("updates_per_step", defaults["updates_per_step"].default)
    return math.ceil(max_updates / per_step)


def register_config(path: str | Path, force: bool = False) -> str:
    """Register the YAML at ``path`` under its ``id``; returns the id."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    env_id = data.get("id")
    if not env_id:
        raise ValueError(f"{path}: an environment config needs an 'id'")
    if env_id in gym.registry and not force:
        if _REGISTERED.get(env_id, (None,))[0] == path:
            return env_id
        raise ValueError(f"{path}: environment id {env_id!r} is already registered")
    gym.register(id=env_id, entry_point="dp_gym.envs.registration:make_registered",
                 kwargs={"config_path": str(path)}, max_episode_steps=episode_steps(data))
    _REGISTERED[env_id] = (path, str(data.get("description", "")))
    return env_id


def register_builtin_envs() -> None:
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        register_config(path)


def list_envs() -> dict[str, str]:
    """Registered dp-gym ids and their one-line descriptions."""
    return {env_id: description for env_id, (_, description) in sorted(_REGISTERED.items())}


def make(env_id: str, **overrides: Any) -> gym.Env:
    """``gymnasium.make`` that keeps ``max_episode_steps`` consistent with overrides."""
    if env_id not in gym.registry:
        raise ValueError(f"unknown environment id {env_id!r}; registered: {list(list_envs())}")
    spec = gym.spec(env_id)
    base = yaml.safe_load(Path(spec.kwargs["config_path"]).read_text()) or {}
    steps = episode_steps({**base, **overrides})
    return gym.make(env_id, max_episode_steps=steps, **overrides)


def config_of(env_id: str, **overrides: Any) -> EnvConfig:
    """The validated :class:`EnvConfig` of a registered id, with overrides."""
    if env_id not in gym.registry:
        raise ValueError(f"unknown environment id {env_id!r}; registered: {list(list_envs())}")
    return EnvConfig.from_yaml(gym.spec(env_id).kwargs["config_path"], **overrides)
