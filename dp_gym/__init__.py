"""dp-gym: differentially private fine-tuning of language models as a Gymnasium environment.

Importing the package registers the ``dp_gym/...`` environment ids with Gymnasium, and for each
whose task has a public proxy a ``...Proxy-v0`` id (public data only: for RL libraries that train
on an id, such as RL Zoo).
"""

from dp_gym.config import ConfigError, EnvConfig
from dp_gym.envs import (
    DPFineTuneEnv,
    config_of,
    import_gym_packages,
    list_envs,
    list_proxy_envs,
    make,
    make_from_config,
    register_builtin_envs,
    register_config,
    register_reward,
    resolve_env_id,
    validate_config,
)
from dp_gym.tasks import Task, register_task

register_builtin_envs()

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DPFineTuneEnv",
    "EnvConfig",
    "Task",
    "list_envs",
    "list_proxy_envs",
    "make",
    "make_from_config",
    "config_of",
    "import_gym_packages",
    "register_config",
    "register_reward",
    "register_task",
    "resolve_env_id",
    "validate_config",
]
