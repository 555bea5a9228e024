"""The vision task's public proxies: another image-caption corpus, the same LLaVA and layouts."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import dp_gym
from dp_gym.data.patterns import PALETTE, make_patterns
from dp_gym.data.scenes import COLOURS, SHAPES
from dp_gym.envs import InstanceDistribution, ProxyEnv
from dp_gym.tasks import VisionLanguageTask

SMALL = {"task_kwargs": {"n_train": 32, "n_val": 4}, "max_updates": 4, "updates_per_step": 2}
CHEAP = InstanceDistribution(train_sizes=(16, 32), n_val=4, epsilon=(1.0, 8.0))
KEY = "dp-gym-test-secret-key-0002"


def make_proxy(env_id, dataset="scenes"):
    # an override replaces task_kwargs whole: name the dataset again
    return gym.make(env_id, proxy=CHEAP.to_dict(), **{**SMALL, "task_kwargs": {**SMALL["task_kwargs"], "dataset": dataset}})


def test_patterns_are_deterministic_and_share_no_word_with_the_scenes():
    first, again = make_patterns(40, seed=3), make_patterns(40, seed=3)
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again, strict=True))
    assert first[0][0].shape == (32, 32, 3) and first[0][0].dtype == np.uint8
    words = {word.strip(".,") for _, caption in make_patterns(400, seed=0) for word in caption.split()}
    assert not words & {*COLOURS, *SHAPES, "background"}
    assert set(PALETTE) <= words  # every colour shows up


def test_a_vision_proxy_reads_no_private_image(monkeypatch):
    def no_private_data(*args, **kwargs):
        raise AssertionError("the private scene generator was called")

    monkeypatch.setattr("dp_gym.tasks.vision.make_scenes", no_private_data)
    config = dp_gym.config_of("dp_gym/TinyVision-v0", **SMALL)
    env = ProxyEnv(config, CHEAP, secret_key=KEY)
    corpora = set()
    for seed in range(4):
        _, info = env.reset(seed=seed)
        corpora.add(info["proxy_instance"]["corpus"])
        assert env.task.public_training_data and env.task.dataset in ("patterns", "digits")
    assert corpora <= {"patterns", "digits"}
    *_, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert np.isfinite(info["val_loss"]) and env.privacy_report().private_episodes == 0
    gym_check_env(env, skip_render_check=True)


def test_the_proxy_keeps_the_model_pruning_and_layouts():
    private = dp_gym.make("dp_gym/TinyVision-v0", **SMALL).unwrapped
    proxy = make_proxy("dp_gym/TinyVisionProxy-v0")
    assert proxy.observation_space == private.observation_space and proxy.action_space == private.action_space
    assert proxy.unwrapped.action_layout == private.action_layout
    assert proxy.unwrapped.task.visual_tokens == private.task.visual_tokens  # the same token pruning


def test_a_digits_deployment_never_trains_its_proxy_on_digits():
    assert VisionLanguageTask.proxy_corpora({"dataset": "digits"}) == ("patterns",)
    assert VisionLanguageTask.proxy_corpora({"dataset": "scenes"}) == ("patterns", "digits")
    with pytest.raises(ValueError, match="'digits' is the deployment's own dataset"):
        VisionLanguageTask.proxy({"dataset": "digits"}, corpus="digits")
    with pytest.raises(ValueError, match="a vision proxy trains on one of"):
        VisionLanguageTask.proxy({"dataset": "scenes"}, corpus="scenes")
    assert dp_gym.list_proxy_envs()["dp_gym/TinyDigitsProxy-v0"] == "dp_gym/TinyDigits-v0"
    env = make_proxy("dp_gym/TinyDigitsProxy-v0", dataset="digits")
    for seed in range(3):
        assert env.reset(seed=seed)[1]["proxy_instance"]["corpus"] == "patterns"
