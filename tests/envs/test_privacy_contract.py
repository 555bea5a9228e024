"""The privacy contract of the environment: secret randomness, and no NaN reaching a controller."""

import copy
import math
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from opacus.optimizers.optimizer import _generate_noise
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

import dp_gym
from dp_gym import DPFineTuneEnv
from dp_gym.engine import DPUpdater, ParameterGroups
from dp_gym.engine.randomness import SECRET_KEY_ENV

SMALL = {"task_kwargs": {"n_train": 64, "n_val": 8}, "max_updates": 8, "updates_per_step": 2}
KEY = "dp-gym-test-secret-key-0001"
#: one update per step, fixed clip and noise, no statistics: the release is exactly the noisy sums
ATTACKED = {**SMALL, "updates_per_step": 1, "sample_rate": 0.25, "count_noise": None, "loss_noise": None,
            "controls": {"clip": "control", "noise": "calibrated", "prune": 0.0}, "clip_range": [0.5, 0.5],
            "grouping": "global"}


def clipped_sums(env: DPFineTuneEnv, base_state: dict, indices: torch.Tensor, clip: float) -> torch.Tensor:
    """What the attacker computes: the noiseless clipped sum of a batch at the base weights."""
    model = env.task.build_model()
    model.load_state_dict(base_state)
    groups = ParameterGroups(model, "global")
    updater = DPUpdater(model, torch.optim.SGD(model.parameters(), lr=0.0), groups, 1.0,
                        sample_rate=env.config.sample_rate, loss_fn=env.task.per_sample_loss)
    report = updater.step(env.task.train_batch(indices), clip=clip, noise=0.0)
    return report.noisy_update["all"]  # divided by m = 1: the clipped sum itself


def test_the_released_sums_cannot_be_denoised_from_the_public_seed():
    """The adversary of the privacy review: knowing the public seed (and the config), rebuild the
    Poisson batch and the noise generator the way dp-gym used to seed them (sampler = seed, noise =
    seed + 1), subtract, and check the residual. With secret randomness it is as large as the noise."""
    env = DPFineTuneEnv(ATTACKED)
    seed = 5
    env.reset(seed=seed)
    base_state = copy.deepcopy(env.run.model.state_dict())
    env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    m = env.run.expected_batch_size
    released = env._episode["previous_update"]["all"] * m  # sum + noise
    sigma, clip = float(env.calibrated_group_noise()[0]), 0.5
    noise_norm = sigma * clip * math.sqrt(released.numel())
    for sampler_seed, noise_seed in [(seed, seed + 1), (seed, seed), (0, 1), (seed + 1, seed)]:
        sampler = UniformWithReplacementSampler(num_samples=env.task.train_size, sample_rate=env.config.sample_rate,
                                                generator=torch.Generator().manual_seed(sampler_seed), steps=1)
        (indices,) = list(iter(sampler))
        guess_sum = clipped_sums(env, base_state, torch.as_tensor(indices, dtype=torch.long), clip)
        guess_noise = _generate_noise(sigma * clip, released, torch.Generator().manual_seed(noise_seed), False)
        residual = float((released - guess_sum - guess_noise).norm())
        # the right guess leaves ~0 (rounding); an independent guess leaves ~sqrt(2) x the noise
        assert residual > 0.5 * noise_norm, (sampler_seed, noise_seed, residual, noise_norm)


SCRIPT = """
import hashlib, numpy as np
from dp_gym import DPFineTuneEnv
env = DPFineTuneEnv(task_kwargs={"n_train": 32, "n_val": 4}, max_updates=4, updates_per_step=2)
env.reset(seed=3)
observation, *_ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
print(hashlib.sha256(observation.tobytes()).hexdigest())
"""


def releases_of_fresh_processes(keys: list[str | None]) -> list[str]:
    """One fresh process per key (None: no key), run two at a time."""
    processes = []
    for key in keys:
        environment = {k: v for k, v in os.environ.items() if k != SECRET_KEY_ENV}
        if key is not None:
            environment[SECRET_KEY_ENV] = key
        processes.append(subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=environment))
    releases = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
        releases.append(stdout.strip().splitlines()[-1])
    return releases


def test_fresh_processes_differ_without_a_key_and_agree_with_the_same_key():
    no_key_a, no_key_b = releases_of_fresh_processes([None, None])
    key_a, key_b = releases_of_fresh_processes([KEY, KEY])
    assert no_key_a != no_key_b
    assert key_a == key_b


@pytest.mark.parametrize("key", [None, KEY], ids=["no key", "key"])
def test_the_sub_envs_of_a_vector_env_never_share_secret_randomness(key):
    envs = gym.make_vec("dp_gym/TinyText-v0", num_envs=2, vectorization_mode="sync", secret_key=key, **SMALL)
    observations, _ = envs.reset() if key is None else envs.reset(seed=5)
    first, second = (env.unwrapped.run.randomness for env in envs.envs)
    for use_a in ("noise", "sampling"):
        for use_b in ("noise", "sampling"):
            a = torch.randn(16, generator=first.generator(use_a, 0))
            b = torch.randn(16, generator=second.generator(use_b, 0))
            assert not torch.equal(a, b), (use_a, use_b)
    observations, *_ = envs.step(np.zeros(envs.action_space.shape, dtype=np.float32))
    assert not np.array_equal(observations[0], observations[1])
    envs.close()


def test_noise_streams_tell_apart_episodes_that_share_key_and_seed():
    env = DPFineTuneEnv(SMALL, secret_key=KEY)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    outcomes = []
    for stream in ("vanilla", "vanilla", "sac"):
        env.reset(seed=1, options={"noise_stream": stream})
        outcomes.append(env.step(action)[0])
    np.testing.assert_array_equal(outcomes[0], outcomes[1])
    assert not np.array_equal(outcomes[0], outcomes[2])
    with pytest.raises(ValueError, match=r"reset options \['stream'\] are unknown"):
        env.reset(seed=1, options={"stream": "x"})


def test_secure_mode_is_reachable_from_the_config_and_refuses_a_key():
    env = DPFineTuneEnv({**SMALL, "secure_mode": True})
    assert env.run.updater.secure_mode and env.run.randomness.secure_mode
    env.reset(seed=0)
    *_, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert info["epsilon"] > 0
    with pytest.raises(ValueError, match="secure_mode"):
        DPFineTuneEnv({**SMALL, "secure_mode": True}, secret_key=KEY)


def test_a_nan_parameter_ends_the_episode_with_a_flag_and_a_finite_reward():
    env = DPFineTuneEnv(SMALL)
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    good, *_ = env.step(action)
    epsilon = env.budget.epsilon_spent()
    with torch.no_grad():
        next(iter(env.run.groups.parameters(env.group_names[1]))).view(-1)[0] = float("nan")
    observation, reward, terminated, truncated, info = env.step(action)
    assert terminated and not truncated
    assert "non-finite parameter" in info["failure"] and env.group_names[1] in info["failure"]
    assert reward == env.config.failure_reward and math.isfinite(reward)
    np.testing.assert_array_equal(observation, good)  # the last finite observation, not a NaN mapped to 0
    assert np.all(np.isfinite(observation)) and math.isfinite(info["val_loss"])
    assert env.budget.epsilon_spent() == epsilon  # nothing more was spent on a broken model
    with pytest.raises(RuntimeError, match="episode has ended"):
        env.step(action)


def test_a_nan_validation_loss_or_reward_never_reaches_the_controller(monkeypatch):
    env = DPFineTuneEnv(SMALL)
    env.reset(seed=0)
    monkeypatch.setattr(env.task, "evaluate", lambda model: float("nan"))
    observation, reward, terminated, _, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert terminated and "non-finite validation loss" in info["failure"]
    assert reward == env.config.failure_reward and np.all(np.isfinite(observation))

    dp_gym.register_reward("test-nan-reward", lambda context: float("nan"), force=True)
    env = DPFineTuneEnv({**SMALL, "reward": {"name": "test-nan-reward"}})
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert terminated and reward == env.config.failure_reward and "reward function returned nan" in info["failure"]


def test_with_a_key_runs_of_other_configs_never_share_noise():
    a = DPFineTuneEnv(SMALL, secret_key=KEY)
    b = DPFineTuneEnv({**SMALL, "learning_rate": 0.001}, secret_key=KEY)
    for env in (a, b):
        env.reset(seed=4, options={"noise_stream": "same"})
    assert not torch.equal(torch.randn(8, generator=a.run.randomness.generator("noise", 0)),
                           torch.randn(8, generator=b.run.randomness.generator("noise", 0)))


def test_a_private_checkpoint_cannot_change_its_budget():
    env = DPFineTuneEnv(SMALL)
    env.reset(seed=0)
    env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    state = env.state_dict()
    state["instance"]["epsilon"] = 8.0
    with pytest.raises(ValueError, match=r"checkpoint field instance changes \['epsilon'\] of a private environment"):
        DPFineTuneEnv(SMALL).load_state_dict(state)
