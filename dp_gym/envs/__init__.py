"""The Gymnasium environment: actions, observations, rewards, registration."""

from dp_gym.envs.actions import ActionCodec, DecodedAction
from dp_gym.envs.dp_finetune_env import DPFineTuneEnv
from dp_gym.envs.fine_tuning import FineTuningRun, RunFailure
from dp_gym.envs.observations import ObservationBuilder
from dp_gym.envs.proxy import InstanceDistribution, ProxyEnv, noise_to_signal
from dp_gym.envs.registration import (
    config_of,
    import_gym_packages,
    list_envs,
    list_proxy_envs,
    make,
    make_from_config,
    make_proxy,
    proxy_id,
    register_builtin_envs,
    register_config,
    resolve_env_id,
)
from dp_gym.envs.rewards import RewardContext, get_reward, register_reward, registered_rewards
from dp_gym.envs.validation import validate_config

__all__ = [
    "ActionCodec",
    "DPFineTuneEnv",
    "DecodedAction",
    "FineTuningRun",
    "InstanceDistribution",
    "ProxyEnv",
    "ObservationBuilder",
    "RewardContext",
    "RunFailure",
    "get_reward",
    "list_envs",
    "list_proxy_envs",
    "make_proxy",
    "proxy_id",
    "make",
    "make_from_config",
    "noise_to_signal",
    "config_of",
    "import_gym_packages",
    "resolve_env_id",
    "register_builtin_envs",
    "register_config",
    "register_reward",
    "registered_rewards",
    "validate_config",
]
