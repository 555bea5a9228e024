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
