"""Environment ids: dp-gym's presets, and any Gymnasium id that builds a :class:`DPFineTuneEnv`.

The presets live under the ``dp_gym/`` namespace, one YAML each in ``envs_configs/`` (shipped in
the wheel as ``dp_gym.envs_configs``, read with ``importlib.resources``). Gymnasium 1.x has no
plugin entry points, so ``import dp_gym`` registers them. A YAML's ``id`` names the environment,
``description`` is the line ``list_envs`` prints, and every other key is an :class:`EnvConfig` field.

Everything that takes an environment (the CLI, :func:`make`, :func:`config_of`, training) accepts:

* a registered Gymnasium id, dp-gym's or yours: ``gym.register("mylab/Tickets-v0",
  entry_point="dp_gym:DPFineTuneEnv", kwargs={"config": {...}})`` in a module you import first
  (``--gym-packages mylab`` on the command line, as in RL Baselines3 Zoo);
* Gymnasium's ``"module:EnvId-v0"`` form (the module is imported, then the id looked up);
* a path to an environment YAML (registered under its ``id``).

``max_episode_steps`` is ``ceil(max_updates / updates_per_step)``; :func:`make` keeps it consistent
with overrides (the environment truncates at ``max_updates`` on its own regardless).
"""

from __future__ import annotations

import importlib
import importlib.resources
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml

from dp_gym.config import EnvConfig
from dp_gym.envs.validation import validate_config
from dp_gym.utils.registry import Registry

#: where the preset YAMLs are (inside the installed package)
CONFIG_PACKAGE = "dp_gym.envs_configs"
#: ids registered from a YAML: id -> (path, description)
PRESETS: Registry[tuple[Path, str]] = Registry("environment preset")


def config_dir() -> Path:
    """The folder of the preset YAMLs (``envs_configs/``, or its copy in an installed wheel)."""
    return Path(str(importlib.resources.files(CONFIG_PACKAGE)))


def make_registered(config_path: str, secret_key=None, noise_stream: str = "", **overrides: Any):
    """Gymnasium entry point: build the environment of a YAML with overrides (and an optional
    secret key and default noise stream, which are never part of the config)."""
    from dp_gym.envs.dp_finetune_env import DPFineTuneEnv

    return DPFineTuneEnv(EnvConfig.from_yaml(config_path, **overrides), secret_key=secret_key,
                         noise_stream=noise_stream)


def make_from_config(path: str | Path, **overrides: Any):
    """Build a (TimeLimit-free) environment straight from a YAML file; it truncates itself."""
    return make_registered(str(path), **overrides)


def episode_steps(config: EnvConfig | dict[str, Any]) -> int:
    if isinstance(config, EnvConfig):
        return math.ceil(config.max_updates / config.updates_per_step)
    defaults = EnvConfig.__dataclass_fields__
    max_updates = config.get("max_updates", defaults["max_updates"].default)
    per_step = config.get("updates_per_step", defaults["updates_per_step"].default)
    return math.ceil(max_updates / per_step)


def register_config(path: str | Path, force: bool = False) -> str:
    """Register the YAML at ``path`` under its ``id``; returns the id.

    Raises:
        ValueError: for a YAML without an ``id``, or an id another YAML took (unless ``force``).
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    env_id = data.get("id")
    if not env_id:
        raise ValueError(f"{path}: an environment config needs an 'id'")
    if env_id in gym.registry and not force:
        if env_id in PRESETS and PRESETS.get(env_id)[0] == path:
            return env_id
        raise ValueError(f"{path}: environment id {env_id!r} is already registered")
    gym.register(id=env_id, entry_point="dp_gym.envs.registration:make_registered",
                 kwargs={"config_path": str(path)}, max_episode_steps=episode_steps(data))
    PRESETS.register(env_id, (path, str(data.get("description", ""))), force=True)
    return env_id


#: public-proxy ids: proxy id -> the deployment id it is a proxy of
PROXY_IDS: dict[str, str] = {}


def proxy_id(env_id: str) -> str:
    """``dp_gym/TinyTextFlat-v0`` -> ``dp_gym/TinyTextFlatProxy-v0``."""
    name, dash, version = env_id.rpartition("-v")
    return f"{name}Proxy{dash}{version}" if dash else f"{env_id}Proxy"


def make_proxy(of: str, proxy: dict[str, Any] | None = None, secret_key=None, **overrides: Any):
    """Gymnasium entry point of a proxy id: :class:`dp_gym.envs.ProxyEnv` of the deployment id ``of``
    (with config ``overrides``) on instances drawn from ``proxy`` (an ``InstanceDistribution`` as a
    dict). Its episodes use public data only, so an RL library may train on them freely."""
    from dp_gym.envs.proxy import InstanceDistribution, ProxyEnv

    return ProxyEnv(config_of(of, **overrides), InstanceDistribution.from_dict(proxy), secret_key=secret_key)


def register_proxy(env_id: str) -> str | None:
    """Register ``proxy_id(env_id)`` for a preset whose task has a public proxy; returns the id
    (None when the task has none). RL libraries that only take an id (RL Zoo, RLlib) train on it."""
    from dp_gym.tasks import Task, resolve_task

    path = PRESETS.get(env_id)[0]
    task = resolve_task((yaml.safe_load(Path(path).read_text()) or {}).get("task", "text"))
    if getattr(task.proxy, "__func__", None) is Task.proxy.__func__:
        return None
    proxy = proxy_id(env_id)
    # no TimeLimit: instances may have other episode lengths, and every episode truncates itself
    gym.register(id=proxy, entry_point="dp_gym.envs.registration:make_proxy", kwargs={"of": env_id})
    PROXY_IDS[proxy] = env_id
    return proxy


def register_builtin_envs() -> None:
    for path in sorted(config_dir().glob("*.yaml")):
        register_proxy(register_config(path))


def list_proxy_envs() -> dict[str, str]:
    """The registered public-proxy ids, each with the deployment id it is a proxy of."""
    return dict(PROXY_IDS)


def list_envs() -> dict[str, str]:
    """dp-gym's preset ids (and YAMLs registered since) with their one-line descriptions."""
    return {env_id: PRESETS.get(env_id)[1] for env_id in PRESETS.names()}


def import_gym_packages(packages: Iterable[str]) -> None:
    """Import modules that register environments (RL Zoo's ``--gym-packages``).

    Raises:
        ValueError: naming a module that does not import.
    """
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError as error:
            raise ValueError(f"gym package {package!r} does not import: {error}") from None


def resolve_env_id(env: str) -> str:
    """The registered Gymnasium id for ``env``: an id, ``"module:EnvId-v0"`` or a YAML path.

    Raises:
        ValueError: naming what is registered when ``env`` is none of these.
    """
    if env in gym.registry:
        return env
    if env.endswith((".yaml", ".yml")):
        if not Path(env).exists():
            raise ValueError(f"environment config {env} does not exist")
        return register_config(env, force=True)
    if ":" in env:
        module, _, env_id = env.partition(":")
        import_gym_packages([module])
        if env_id in gym.registry:
            return env_id
        raise ValueError(f"module {module!r} registered no environment id {env_id!r}")
    raise ValueError(f"unknown environment id {env!r}; dp-gym's: {', '.join(list_envs())}; or your own registered id "
                     "(import its module with --gym-packages), 'module:EnvId-v0', or a YAML path")


def config_of(env: str, **overrides: Any) -> EnvConfig:
    """The validated :class:`EnvConfig` of an environment id (see :func:`resolve_env_id`), with
    overrides, without building anything.

    Raises:
        ValueError: when the id's entry point is not configured like a dp-gym environment.
    """
    spec = gym.spec(resolve_env_id(env))
    if spec.id in PROXY_IDS:
        raise ValueError(f"{spec.id} is the public-proxy id of {PROXY_IDS[spec.id]}: dp-gym's commands take the "
                         "deployment id (they train and tune on its proxies by default)")
    kwargs = dict(spec.kwargs)
    kwargs.pop("secret_key", None)
    kwargs.pop("noise_stream", None)
    if "config_path" in kwargs:
        return validate_config(EnvConfig.from_yaml(kwargs.pop("config_path"), **kwargs, **overrides))
    base = kwargs.pop("config", None)
    if isinstance(base, (str, Path)):
        base = yaml.safe_load(Path(base).read_text()) or {}
        base.pop("id", None), base.pop("description", None)
    base = base.to_dict() if isinstance(base, EnvConfig) else dict(base or {})
    try:
        return validate_config(EnvConfig.from_dict({**base, **kwargs}, **overrides))
    except TypeError as error:
        raise ValueError(f"environment {spec.id!r} (entry point {spec.entry_point}) is not configured like a "
                         f"dp-gym environment: {error}") from None


def make(env: str, **overrides: Any) -> gym.Env:
    """``gymnasium.make`` for a dp-gym environment (any id :func:`resolve_env_id` accepts), with
    ``max_episode_steps`` kept consistent with the overrides.

    Raises:
        ValueError: for an unknown id, or one that does not build a :class:`DPFineTuneEnv`.
    """
    from dp_gym.envs.dp_finetune_env import DPFineTuneEnv

    env_id = resolve_env_id(env)
    config_overrides = {k: v for k, v in overrides.items() if k not in ("secret_key", "noise_stream")}
    steps = episode_steps(config_of(env_id, **config_overrides))
    made = gym.make(env_id, max_episode_steps=steps, **overrides)
    if not isinstance(made.unwrapped, DPFineTuneEnv):
        made.close()
        raise ValueError(f"environment {env_id!r} builds a {type(made.unwrapped).__name__}, not a dp-gym "
                         "DPFineTuneEnv")
    return made
