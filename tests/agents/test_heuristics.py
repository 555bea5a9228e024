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


@pytest.mark.parametrize("name", ["vanilla", "adaptive_quantile", "decay", "dual_priv", "action0", "random"])
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


def _at_progress(controller, env, progress: float) -> dict:
    observation = np.zeros(env.observation_space.shape)
    observation[controller.layout["updates_fraction"]] = progress
    return env.unwrapped.decode_action(controller.predict(observation)[0])


def test_schedule_interpolates_its_knots_over_the_episode(env):
    controller = make_controller("schedule", env, clip=0.2, clip_knots=[2.0, 1.0, 0.5], noise_knots=[1.0, 1.0, 1.0])
    first = env.unwrapped.group_names[0]
    for progress, factor in ((0.0, 2.0), (0.25, 1.5), (0.5, 1.0), (1.0, 0.5)):
        assert _at_progress(controller, env, progress)[first]["clip"] == pytest.approx(0.2 * factor, rel=1e-5)


def test_decay_is_the_two_knot_schedule(env):
    decay = make_controller("decay", env, clip=0.2, clip_start=1.5, clip_end=0.5, noise_start=1.0, noise_end=1.0)
    schedule = make_controller("schedule", env, clip=0.2, clip_knots=[1.5, 0.5], noise_knots=[1.0, 1.0])
    for progress in (0.0, 0.3, 1.0):
        assert _at_progress(decay, env, progress) == _at_progress(schedule, env, progress)


def test_schedule_noise_knots_scale_plain_dp_sgd_noise(env):
    controller = make_controller("schedule", env, clip=0.2, clip_knots=[1.0], noise_knots=[1.1, 0.9])
    first = env.unwrapped.group_names[0]
    for progress, factor in ((0.0, 1.1), (0.5, 1.0), (1.0, 0.9)):
        noise = _at_progress(controller, env, progress)[first]["noise"]
        assert noise == pytest.approx(controller.sigmas[0] * factor, rel=1e-4)


def test_a_diverged_grid_point_is_never_the_best():
    from types import SimpleNamespace

    from agents.tuning import TuningResult

    run = lambda ppl: SimpleNamespace(final_val_ppl=ppl, base_val_ppl=100.0)  # noqa: E731
    tuned = TuningResult({0: [run(float("nan"))], 1: [run(80.0)], 2: [run(120.0)]})
    assert tuned.scores[0] == float("inf") and tuned.best == 1


@pytest.mark.parametrize("knots", [[], [1.0, 0.0], [1.0, float("nan")]])
def test_schedule_refuses_bad_knots_naming_the_field(env, knots):
    with pytest.raises(ValueError, match="clip_knots"):
        make_controller("schedule", env, clip_knots=knots)


def test_optuna_schedule_search_starts_at_plain_dp_sgd_and_keeps_every_trial():
    from agents.tuning import tune_schedule, tuning_privacy

    tuned = tune_schedule("dp_gym/TinyText-v0", 3, 0, SMALL, knots=2, private=True)
    assert sorted(tuned.runs) == [0, 1, 2] and len(tuned.episodes) == 3
    assert tuned.params[0]["clip_knots"] == [1.0, 1.0] and tuned.params[0]["noise_knots"] == [1.0, 1.0]
    assert any(tuned.params[k]["clip_knots"] != [1.0, 1.0] for k in (1, 2))  # TPE proposes other schedules
    assert np.isfinite(tuned.scores[tuned.best]) and tuned.scores[tuned.best] <= tuned.scores[0]
    assert tuning_privacy(tuned).private_episodes == 3  # private trials are accounted
