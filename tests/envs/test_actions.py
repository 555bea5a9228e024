"""The shares layout: the zero action is per-layer clipping with one noise at plain DP-SGD's pace."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dp_gym
from dp_gym.config import ConfigError, EnvConfig
from dp_gym.envs import ActionCodec
from dp_gym.privacy import ReleasedStatistics, composed_noise_multiplier

GROUPS = ["embeddings", "h.0", "h.1", "head"]
CONFIG = EnvConfig(controls={"clip": "control", "noise": "control", "prune": 0.0}, clip_range=[0.025, 0.4],
                   noise_scale="paced", noise_range=[0.8, 1.25], noise_allocation="shares")
CODEC = ActionCodec(CONFIG, GROUPS)
PACE = np.full(len(GROUPS), 2.0)
STATISTICS = ReleasedStatistics(10.0, len(GROUPS), 10.0)


def test_the_layout_is_the_clips_one_pace_and_one_share_per_group():
    assert CODEC.layout == [f"clip/{g}" for g in GROUPS] + ["noise/pace"] + [f"noise/share/{g}" for g in GROUPS]
    flat = ActionCodec(CONFIG, ["all"])
    assert flat.layout == ["clip/all", "noise/pace"]


actions = st.lists(st.floats(-1, 1), min_size=9, max_size=9).map(np.array)


@settings(max_examples=40, deadline=None)
@given(action=actions)
def test_zero_shares_give_every_coordinate_the_same_noise_at_the_pace(action):
    action[4:] = 0.0  # pace factor 1 and zero shares; any clips
    decoded = CODEC.decode(action, PACE)
    per_coordinate_std = decoded.noise * decoded.clip
    np.testing.assert_allclose(per_coordinate_std, per_coordinate_std[0], rtol=1e-9)  # one noise
    assert composed_noise_multiplier(decoded.noise, STATISTICS) == pytest.approx(
        composed_noise_multiplier(PACE, STATISTICS), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(action=actions)
def test_shares_move_noise_between_groups_but_never_change_its_privacy(action):
    decoded = CODEC.decode(action, PACE)
    unshared = action.copy()
    unshared[5:] = 0.0
    assert composed_noise_multiplier(decoded.noise, STATISTICS) == pytest.approx(
        composed_noise_multiplier(CODEC.decode(unshared, PACE).noise, STATISTICS), rel=1e-9)
    again = CODEC.decode(CODEC.encode(clip=decoded.clip, noise=decoded.noise, noise_reference=PACE), PACE)
    np.testing.assert_allclose(again.noise, decoded.noise, rtol=1e-4)
    np.testing.assert_allclose(again.clip, decoded.clip, rtol=1e-4)


def test_shares_need_paced_noise():
    with pytest.raises(ConfigError, match="noise_allocation 'shares' needs noise_scale 'paced'"):
        EnvConfig(noise_allocation="shares")
    with pytest.raises(ConfigError, match="share_range must be > 1"):
        EnvConfig(**{**CONFIG.to_dict(), "share_range": 1.0})


def test_the_recommended_env_at_action_zero_is_tuned_dp_sgd():
    env = dp_gym.make("dp_gym/TinyTextSchedule-v0", task_kwargs={"n_train": 64, "n_val": 8}, max_updates=8,
                      updates_per_step=2)
    env.reset(seed=0)
    zero = np.zeros(env.action_space.shape, dtype=np.float32)
    decoded = env.unwrapped.decode_action(zero)
    assert {round(v["clip"], 9) for v in decoded.values()} == {0.1}
    np.testing.assert_allclose([v["noise"] for v in decoded.values()], env.unwrapped.calibrated_group_noise())
    assert env.unwrapped.config.learning_rate == 0.0025


def test_the_recommended_vision_env_at_action_zero_is_tuned_dp_sgd():
    env = dp_gym.make("dp_gym/TinyVisionSchedule-v0", task_kwargs={"dataset": "scenes", "n_train": 32, "n_val": 4},
                      max_updates=4, updates_per_step=2)
    env.reset(seed=0)
    zero = np.zeros(env.action_space.shape, dtype=np.float32)
    decoded = env.unwrapped.decode_action(zero)
    assert len(decoded) > 1 and {round(v["clip"], 9) for v in decoded.values()} == {0.5}
    assert {v["prune"] for v in decoded.values()} == {0.0}
    np.testing.assert_allclose([v["noise"] for v in decoded.values()], env.unwrapped.calibrated_group_noise())
    assert env.unwrapped.config.learning_rate == 0.0025


def test_pace_unit_budget_needs_shares():
    with pytest.raises(ConfigError, match="pace_unit must be one of"):
        EnvConfig(**{**CONFIG.to_dict(), "pace_unit": "joules"})
    with pytest.raises(ConfigError, match="pace_unit 'budget' needs noise_allocation 'shares'"):
        EnvConfig(noise_scale="paced", noise_range=[0.8, 1.25], pace_unit="budget")


def _budget_paced_env(pace_unit: str, epsilon: float = 1.0):
    """A proxy-like instance where a noise cut is steep: 256 records at rate 0.02, epsilon 1."""
    return dp_gym.make("dp_gym/TinyTextSchedule-v0", task_kwargs={"n_train": 256, "n_val": 4}, sample_rate=0.02,
                       max_updates=40, updates_per_step=4, epsilon=epsilon, pace_unit=pace_unit)


def _pace_action(env, entry: float) -> np.ndarray:
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    action[env.unwrapped.codec.layout.index("noise/pace")] = entry
    return action


@pytest.mark.parametrize("entry", [-1.0, 1.0])
def test_pace_unit_budget_spends_the_same_share_of_the_budget_whatever_the_noise_regime(entry):
    """Factor f spends f^-2 even shares: 10 even steps, so f = 0.8 spends 1.5625/10 of the budget in its
    first step (up to the rounding of remaining * f^2), where a 0.8 noise factor spends far more."""
    fractions = {}
    for unit in ("noise", "budget"):
        env = _budget_paced_env(unit)
        env.reset(seed=0)
        env.step(_pace_action(env, entry))
        fractions[unit] = env.unwrapped.budget.fraction_spent()
    spread = round(40 * (0.8 if entry < 0 else 1.25) ** 2)  # the updates the first step's pace spreads over
    assert fractions["budget"] == pytest.approx(4 / spread, rel=0.02)
    if entry < 0:
        assert fractions["noise"] > 4 * fractions["budget"]  # the noise factor's cliff this unit removes


def test_pace_unit_budget_is_plain_dp_sgd_at_action_zero_and_its_last_step_spends_what_is_left():
    env = _budget_paced_env("budget")
    env.reset(seed=0)
    zero = np.zeros(env.action_space.shape, dtype=np.float32)
    np.testing.assert_allclose([v["noise"] for v in env.unwrapped.decode_action(zero).values()],
                               env.unwrapped.calibrated_group_noise())
    done, steps = False, 0
    while not done:  # always the most noise the action allows: f = 1.25 spends 0.64 even shares a step
        *_, terminated, truncated, info = env.step(_pace_action(env, 1.0))
        done, steps = terminated or truncated, steps + 1
    assert steps == 10 and info["updates"] == 40
    assert env.unwrapped.budget.fraction_spent() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("base", ["dp_gym/TinyTextSchedule-v0", "dp_gym/TinyVisionSchedule-v0"])
def test_the_budget_paced_ids_are_their_base_env_with_the_pace_in_budget_units(base):
    budget_id = base.replace("Schedule-v0", "BudgetSchedule-v0")
    config, base_config = dp_gym.config_of(budget_id).to_dict(), dp_gym.config_of(base).to_dict()
    assert config.pop("pace_unit") == "budget" and base_config.pop("pace_unit") == "noise"
    assert config == base_config  # the same instance, model, zero action and reward
    assert dp_gym.list_proxy_envs()[budget_id.replace("-v0", "Proxy-v0")] == budget_id
