"""dp-gym: differentially private fine-tuning of language models as a Gymnasium environment.

Importing the package registers the ``dp_gym/...`` environment ids with Gymnasium.
"""

from dp_gym.config import ConfigError, EnvConfig
from dp_gym.envs import (
    DPFineTuneEnv,
    config_of,
    import_gym_packages,
    list_envs,
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
