import numpy as np
import pytest

import dp_gym
from agents import make_controller, register_controller, registered_controllers
from agents.heuristics import VanillaController
from dp_gym.evaluation import run_episode

SMALL = {"task_kwargs": {"n_train": 64, "n_val": 8}, "max_updates": 12, "updates_per_step": 2}


@pytest.fixture(scope="module")
def env():
    return dp_gym.make("dp_gym/TinyText-v0", **SMALL)


@pytest.mark.parametrize("name", ["vanilla", "adaptive_quantile", "decay", "dual_priv", "random"])
def test_predict_returns_in_range_actions_of_the_right_shape(env, name):
    controller = make_controller(name, env)
    observation, _ = env.reset(seed=0)
    action, state = controller.predict(observation)
    assert action.shape == env.action_space.shape and env.action_space.contains(action.astype(np.float32))
    assert state is None
    batch, _ = controller.predict(np.stack([observation, observation]))
    assert batch.shape == (2, *env.action_space.shape)
    assert np.all(np.abs(batch) <= 1.0)


def test_vanilla_spends_the_budget_within_one_percent(env):
    result = run_episode(make_controller("vanilla", env), env, seed=0, name="vanilla")
    assert 0.99 * 3.0 <= result.epsilon <= 3.0
    assert result.updates == 12
    assert not any(point.get("budget_projected") for point in result.trajectory)


def test_vanilla_decodes_to_its_clip_and_calibrated_noise(env):
    controller = make_controller("vanilla", env, clip=0.3)
    decoded = env.unwrapped.decode_action(controller.predict(env.reset(seed=0)[0])[0])
    for group in decoded.values():
        assert group["clip"] == pytest.approx(0.3, rel=1e-5)
        assert group["noise"] == pytest.approx(controller.sigmas[0], rel=1e-5)
        assert group["prune"] == pytest.approx(0.0, abs=1e-6)


def test_adaptive_quantile_moves_clips_toward_the_target_quantile(env):
    controller = make_controller("adaptive_quantile", env, initial_clip=0.5, target_quantile=0.5)
    unwrapped = env.unwrapped
    observation = np.zeros(env.observation_space.shape)
    observation[controller.layout["updates_fraction"]] = 0.5
    first = unwrapped.group_names[0]
    observation[controller.layout[f"unclipped_fraction/{first}"]] = 1.0  # nothing clipped: shrink C
    controller.clips[0] = np.full(len(unwrapped.group_names), 0.5)
    action, _ = controller.predict(observation)
    decoded = unwrapped.decode_action(action)
    assert decoded[first]["clip"] < 0.5
    assert decoded[unwrapped.group_names[1]]["clip"] > 0.5  # fraction 0 (all clipped): grow C


def test_adaptive_quantile_needs_released_fractions():
    env = dp_gym.make("dp_gym/TinyText-v0", count_noise=None, **SMALL)
    with pytest.raises(ValueError, match="count_noise"):
        make_controller("adaptive_quantile", env)


def test_dual_priv_prunes(env):
    controller = make_controller("dual_priv", env, prune=0.6)
    decoded = env.unwrapped.decode_action(controller.predict(env.reset(seed=0)[0])[0])
    assert all(group["prune"] == pytest.approx(0.6, rel=1e-5) for group in decoded.values())


def test_controller_registry():
    assert {"vanilla", "adaptive_quantile", "decay", "dual_priv", "random"} <= set(registered_controllers())
    register_controller("vanilla-test-alias", VanillaController)
    with pytest.raises(ValueError, match="already registered"):
        register_controller("vanilla-test-alias", lambda env: None)
    with pytest.raises(ValueError, match="unknown controller 'nope'"):
        make_controller("nope", None)


def test_vanilla_on_a_paced_env_is_factor_one_and_matches_calibrated_noise():
    env = dp_gym.make("dp_gym/TinyTextPaced-v0", max_updates=8, updates_per_step=4,
                      task_kwargs={"n_train": 64, "n_val": 8})
    controller = make_controller("vanilla", env, clip=0.1)
    observation, _ = env.reset(seed=0)
    action, _ = controller.predict(observation)
    layout = env.unwrapped.action_layout
    noise_entries = [a for name, a in zip(layout, action, strict=True) if name.startswith("noise/")]
    np.testing.assert_allclose(noise_entries, 0.0, atol=1e-6)  # factor 1 on the pace
    _, _, _, _, info = env.step(action)
    np.testing.assert_allclose(info["noise"], env.unwrapped.calibrated_group_noise(), rtol=1e-6)
    np.testing.assert_allclose(info["clip"], 0.1, rtol=1e-6)
