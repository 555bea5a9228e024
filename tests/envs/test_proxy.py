"""Public proxies: the same environment on public data, instances of many budgets."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import dp_gym
from dp_gym.config import ConfigError
from dp_gym.data.clinical_notes import DIAGNOSES, FIRST_NAMES, LAST_NAMES, clinical_notes
from dp_gym.data.proxy_corpora import PROXY_CORPORA
from dp_gym.data.public_notes import public_notes
from dp_gym.envs import DPFineTuneEnv, InstanceDistribution, ProxyEnv, noise_to_signal
from dp_gym.tasks import Task, TextTask

SMALL = {"task_kwargs": {"n_train": 64, "n_val": 8}, "max_updates": 8, "updates_per_step": 2}
CHEAP = InstanceDistribution(train_sizes=(32, 64), n_val=4, max_length=24, epsilon=(1.0, 8.0))
KEY = "dp-gym-test-secret-key-0001"


def test_public_notes_share_no_name_condition_or_drug_with_the_private_generator():
    public = " ".join(public_notes(300, seed=0))
    private_words = {*FIRST_NAMES, *LAST_NAMES, *(d for diagnosis, drug, _ in DIAGNOSES for d in (diagnosis, drug))}
    assert not [word for word in private_words if word in public]
    private = " ".join(clinical_notes(300, seed=1000))
    assert "Dear colleague" not in private and "Ward round" not in private


def test_a_proxy_reads_no_private_record(monkeypatch):
    secret = [f"Quimbleford private record {i}" for i in range(20)]
    config = dp_gym.config_of("dp_gym/TinyTextFlat-v0", **{**SMALL, "task_kwargs": {
        "train_records": secret, "val_records": ["a public line"]}})

    def no_private_data(*args, **kwargs):
        raise AssertionError("the private generator was called")

    monkeypatch.setattr("dp_gym.tasks.text.private_train_records", no_private_data)
    env = ProxyEnv(config, CHEAP)
    for seed in range(3):
        env.reset(seed=seed)
        assert not set(secret) & set(env.task.train_records) and env.task.public_training_data
    *_, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    report = env.privacy_report()
    assert report.private_episodes == 0 and "public proxy" in report.epsilon_scope


def test_instances_vary_the_budget_and_keep_the_layouts():
    env = ProxyEnv(dp_gym.config_of("dp_gym/TinyText-v0", **SMALL), CHEAP)
    layouts, budgets = set(), set()
    for seed in range(4):
        observation, info = env.reset(seed=seed)
        instance = info["proxy_instance"]
        budgets.add(round(instance["epsilon"], 6))
        layouts.add((tuple(env.observation_layout), tuple(env.action_layout)))
        index = env.observation_layout.index("log_epsilon_budget")
        assert observation[index] == pytest.approx(np.log10(instance["epsilon"]), abs=1e-6)
        done = False
        while not done:
            *_, terminated, truncated, info = env.step(env.action_space.sample())
            done = terminated or truncated
        assert info["epsilon"] <= instance["epsilon"] == info["epsilon_budget"]
    assert len(layouts) == 1 and len(budgets) == 4
    assert env.reset(seed=2)[1]["proxy_instance"] == env.reset(seed=2)[1]["proxy_instance"]  # the public seed picks it


def test_a_proxy_passes_both_checkers():
    env = ProxyEnv(dp_gym.config_of("dp_gym/TinyTextFlat-v0", **SMALL), CHEAP, secret_key=KEY)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_the_users_public_records_make_a_proxy():
    public = [f"Ticket {i}: the printer on floor {i % 4} is jammed again." for i in range(12)]
    proxy = TextTask.proxy({"public_train_records": public, "max_length": 24}, corpus="user", n_val=2)
    assert set(proxy.train_records) | set(proxy.val_records) == set(public) and proxy.public_training_data
    with pytest.raises(ValueError, match="corpus 'user' needs public_train_records"):
        TextTask.proxy({}, corpus="user")
    with pytest.raises(ValueError, match="unknown proxy corpus 'nope'"):
        TextTask.proxy({}, corpus="nope")
    assert {"public_notes", "python_docs", "scene_captions"} <= set(PROXY_CORPORA.names())


def test_a_task_without_a_proxy_says_what_to_implement():
    with pytest.raises(NotImplementedError, match="implement Task.proxy"):
        Task.proxy({})


@pytest.mark.parametrize("field, value, message", [
    ("corpora", (), "proxy.corpora must not be empty"),
    ("epsilon", (3.0, 1.0), "proxy.epsilon must be"),
    ("sample_rates", (1.5,), "proxy.sample_rates must be in"),
    ("train_sizes", (1,), "proxy.train_sizes must be >= 2"),
])
def test_a_bad_instance_distribution_names_its_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        InstanceDistribution(**{field: value})
    with pytest.raises(ConfigError, match=r"proxy has unknown keys \['epsilons'\]"):
        InstanceDistribution.from_dict({"epsilons": [1, 2]})


def test_an_episode_instance_sets_the_budget_and_is_checked():
    env = DPFineTuneEnv(SMALL)
    observation, info = env.reset(seed=0, options={"instance": {"epsilon": 8.0, "max_updates": 4}})
    assert env.budget.epsilon == 8.0 and info["epsilon_budget"] == 8.0
    assert env.reset(seed=0)[1]["epsilon_budget"] == 3.0  # back to the configured budget
    with pytest.raises(ValueError, match=r"instance fields \['delta'\] are unknown"):
        env.reset(options={"instance": {"delta": 1e-3}})
    with pytest.raises(ConfigError, match="epsilon must be > 0"):
        env.reset(options={"instance": {"epsilon": -1.0}})


def test_every_preset_has_a_registered_proxy_id_that_gym_make_builds():
    proxies = dp_gym.list_proxy_envs()
    assert proxies["dp_gym/TinyTextFlatScheduleProxy-v0"] == "dp_gym/TinyTextFlatSchedule-v0"
    assert proxies["dp_gym/TinyVisionProxy-v0"] == "dp_gym/TinyVision-v0"
    assert {dp_gym.config_of(of).task for of in proxies.values()} == {"text", "vision"}
    env = gym.make("dp_gym/TinyTextFlatScheduleProxy-v0", proxy=CHEAP.to_dict(), **SMALL)
    private = dp_gym.make("dp_gym/TinyTextFlatSchedule-v0", **SMALL)
    assert env.observation_space == private.observation_space and env.action_space == private.action_space
    _, info = env.reset(seed=0)
    assert info["proxy_instance"]["n_train"] in (32, 64)
    assert env.unwrapped.privacy_report().private_episodes == 0


@pytest.mark.parametrize("env_id", ["dp_gym/TinyTextFlatSchedule-v0", "dp_gym/TinyVisionSchedule-v0"])
def test_the_default_proxies_cover_the_deployments_noise_to_signal_ratio(env_id):
    """At every epsilon of the transfer table, the deployment's rho = z / (qN) lies inside the range
    of the default instances' rho at that epsilon (the old defaults were at least twice as noisy)."""
    config = dp_gym.config_of(env_id)
    deployment_n = config.task_arguments()["n_train"]

    def rho_range(distribution, epsilon):
        return [noise_to_signal(epsilon, config.delta, q, n, config.max_updates)
                for q in distribution.sample_rates for n in distribution.train_sizes]

    for epsilon in (1.0, 3.0, 8.0):
        deployed = noise_to_signal(epsilon, config.delta, config.sample_rate, deployment_n, config.max_updates)
        proxies = rho_range(InstanceDistribution(), epsilon)
        assert min(proxies) <= deployed <= max(proxies), (epsilon, deployed, proxies)
        old = rho_range(InstanceDistribution(sample_rates=(0.02, 0.05), train_sizes=(128, 256)), epsilon)
        assert min(old) >= 1.99 * deployed  # twice, up to rounding


def test_the_default_text_proxies_are_not_the_base_models_pretraining_text():
    """Fine-tuning on what the model was pre-trained on has nothing to learn: such a proxy teaches
    controllers to take small steps. The built-in model's proxies share no record with its
    pre-training text; a checkpoint of your own also gets CPython's help topics."""
    from dp_gym.models.tiny_lm import TinyLMConfig, public_text

    pretraining = set(public_text(TinyLMConfig()))
    corpora = TextTask.proxy_corpora({})
    assert "python_docs" not in corpora and "public_notes" in corpora
    for corpus in corpora:
        assert not set(PROXY_CORPORA.get(corpus)(64, 0)) & pretraining, corpus
    assert not set(PROXY_CORPORA.get("python_docs")(64, 0)) - pretraining  # why it is left out
    assert TextTask.proxy_corpora({"tiny": {"public_captions": 100}}) == ("public_notes",)
    assert "python_docs" in TextTask.proxy_corpora({"model": "/models/my-gpt2"})


PAIRED = InstanceDistribution(train_sizes=(32, 64), n_val=4, max_length=24, epsilon=(1.0, 8.0), paired=True)


def _episode(env, action_of, seed):
    observation, _ = env.reset(seed=seed)
    rewards, unpaired, done = [], [], False
    while not done:
        observation, reward, terminated, truncated, info = env.step(action_of(observation))
        rewards.append(reward)
        unpaired.append(info["unpaired_reward"])
        done = terminated or truncated
    return np.array(rewards), np.array(unpaired), info


@pytest.mark.parametrize("key", [None, KEY])
def test_action_zero_ties_its_paired_twin_at_every_step(key):
    # same instance, same secret batches and noise (shared even without a key): the same run
    env = ProxyEnv(dp_gym.config_of("dp_gym/TinyTextFlat-v0", **SMALL), PAIRED, secret_key=key)
    zero = np.zeros(env.action_space.shape, dtype=np.float32)
    rewards, unpaired, info = _episode(env, lambda _: zero, seed=3)
    assert np.all(unpaired != 0) and np.all(rewards == 0.0)
    assert info["val_loss"] == info["reference_val_loss"] and info["reference_val_metric"] == info["val_metric"]


def test_a_paired_return_is_the_policys_return_minus_action_zeros():
    env = ProxyEnv(dp_gym.config_of("dp_gym/TinyTextFlat-v0", **SMALL), PAIRED, secret_key=KEY)
    rng = np.random.default_rng(0)
    rewards, unpaired, info = _episode(env, lambda _: rng.uniform(-1, 1, env.action_space.shape).astype(np.float32), 4)
    twin = env.reference.rewards
    assert rewards.sum() == pytest.approx(unpaired.sum() - sum(twin), abs=1e-9)
    assert np.allclose(rewards[:-1], unpaired[:-1] - np.array(twin[:len(rewards) - 1]))
    assert info["val_loss"] != info["reference_val_loss"]
    unpaired_env = ProxyEnv(dp_gym.config_of("dp_gym/TinyTextFlat-v0", **SMALL), CHEAP)
    unpaired_env.reset(seed=4)
    assert "unpaired_reward" not in unpaired_env.step(np.zeros(env.action_space.shape, dtype=np.float32))[-1]


def test_a_paired_episode_resumes_with_its_twin():
    config = dp_gym.config_of("dp_gym/TinyTextFlat-v0", **SMALL)
    action = np.full(ProxyEnv(config, PAIRED).action_space.shape, 0.5, dtype=np.float32)
    env = ProxyEnv(config, PAIRED, secret_key=KEY)
    env.reset(seed=5)
    first = env.step(action)[1]
    state = env.state_dict()
    rest = [env.step(action)[1] for _ in range(3)]
    resumed = ProxyEnv(config, PAIRED, secret_key=KEY)
    resumed.load_state_dict(state)
    assert first != 0 and [resumed.step(action)[1] for _ in range(3)] == pytest.approx(rest)


def test_only_public_runs_share_their_secret_randomness():
    env = DPFineTuneEnv(SMALL)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="trains on private data"):
        env.run.share_randomness(env.run.randomness)
    with pytest.raises(ConfigError, match="proxy.paired must be true or false"):
        InstanceDistribution(paired="yes")


def test_proxies_on_a_narrower_tiny_model_keep_the_layouts_and_cost_less():
    narrow = InstanceDistribution(train_sizes=(32,), n_val=4, max_length=24, tiny_shapes=({"n_embd": 48},))
    config = dp_gym.config_of("dp_gym/TinyTextBudgetSchedule-v0", **SMALL)
    env, deployment = ProxyEnv(config, narrow), dp_gym.make("dp_gym/TinyTextBudgetSchedule-v0", **SMALL)
    assert env.run.model.config.n_embd == 48 and deployment.unwrapped.run.model.config.n_embd == 96
    assert env.action_layout == deployment.unwrapped.action_layout
    assert env.observation_layout == deployment.unwrapped.observation_layout
    _, info = env.reset(seed=1)
    assert info["proxy_instance"]["tiny"] == {"n_embd": 48}
    sb3_check_env(env)
    # without shapes the instances are those of earlier versions (the shape is drawn last)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    plain = CHEAP.sample(rng_a, config, ("public_notes",))
    drawn = dataclasses.replace(CHEAP, tiny_shapes=({"n_embd": 48},)).sample(rng_b, config, ("public_notes",))
    assert drawn.pop("tiny") == {"n_embd": 48} and drawn == plain


def test_a_bad_tiny_shape_is_named():
    config = dp_gym.config_of("dp_gym/TinyTextBudgetSchedule-v0", **SMALL)
    with pytest.raises(ConfigError, match="proxy.tiny_shapes"):
        ProxyEnv(config, InstanceDistribution(train_sizes=(32,), n_val=4, tiny_shapes=({"no_such_field": 1},)))
    with pytest.raises(ConfigError, match="proxy.tiny_shapes"):
        InstanceDistribution(tiny_shapes=({},))
    own_model = dp_gym.config_of("dp_gym/TinyTextBudgetSchedule-v0", task_kwargs={"model": "/no/such/model"})
    with pytest.raises(ConfigError, match="not the built-in tiny one"):
        ProxyEnv(own_model, InstanceDistribution(tiny_shapes=({"n_embd": 48},)))
