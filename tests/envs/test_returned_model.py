"""``returned_model: best_public``: the episode returns the iterate a public selection split chose."""

import numpy as np
import pytest
import torch

import dp_gym
from dp_gym.config import ConfigError
from dp_gym.data.clinical_notes import clinical_notes
from dp_gym.envs import InstanceDistribution, ProxyEnv
from dp_gym.tasks import TextTask

SMALL = {"task_kwargs": {"n_train": 64, "n_val": 8, "n_select": 8}, "max_updates": 12, "updates_per_step": 4}
ENV = "dp_gym/TinyTextBudgetSchedule-v0"
KEY = "dp-gym-test-secret-key-0001"


def _run(env, spoil_after: int | None = None, spoil=None):
    """Run an episode at action 0; after step ``spoil_after`` call ``spoil(env)``. Returns the infos."""
    env.reset(seed=3)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    infos, done = [], False
    while not done:
        _, reward, terminated, truncated, info = env.step(action)
        info["reward"] = reward
        infos.append(info)
        done = terminated or truncated
        if len(infos) == spoil_after and not done:
            spoil(env)
    return infos


def _scramble(env):
    """Move the trained weights far from where training took them (as a bad late step would)."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for parameter in env.unwrapped.run.groups.all_parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)


def test_the_selection_split_is_public_generated_and_disjoint_from_validation():
    task = TextTask(n_train=16, n_val=8, n_select=8, seed=2)
    assert task.has_selection_split and len(task.selection_records) == 8
    assert not set(task.selection_records) & set(task.val_records)
    assert task.selection_records == clinical_notes(8, seed=3002)  # the declared-public generator's third seed
    assert not set(task.selection_records) & set(task.train_records)
    assert np.isfinite(task.evaluate_selection(task.build_model()))


def test_without_a_selection_split_evaluate_selection_says_how_to_get_one():
    own = TextTask(n_train=4, train_records=["a b c"] * 4, val_records=["d e f"])
    none = TextTask(n_train=4, n_val=2, n_select=0)
    for task in (own, none):
        assert not task.has_selection_split
        with pytest.raises(NotImplementedError, match="selection_records"):
            task.evaluate_selection(task.build_model())
    given = TextTask(train_records=["a b c"] * 4, val_records=["d e f"], selection_records=["g h i"])
    assert given.has_selection_split


def test_a_proxy_selection_split_keeps_its_training_and_validation_records():
    plain = TextTask.proxy({}, corpus="public_notes", n_train=12, n_val=4, seed=1)
    selecting = TextTask.proxy({}, corpus="public_notes", n_train=12, n_val=4, seed=1, n_select=4)
    assert selecting.train_records == plain.train_records and selecting.val_records == plain.val_records
    assert not plain.has_selection_split and selecting.has_selection_split
    assert not set(selecting.selection_records) & (set(plain.train_records) | set(plain.val_records))
    user = TextTask.proxy({"public_train_records": [f"public line {i}" for i in range(16)]}, corpus="user",
                          n_val=2, n_select=2)
    assert len(user.selection_records) == 2
    assert not set(user.selection_records) & (set(user.train_records) | set(user.val_records))


def test_the_env_returns_the_best_iterate_by_the_selection_split():
    env = dp_gym.make(ENV, returned_model="best_public", secret_key=KEY, **SMALL)
    infos = _run(env, spoil_after=1, spoil=_scramble)
    final = infos[-1]
    assert final["returned_updates"] == 4  # the iterate before the weights were scrambled
    assert final["last_val_loss"] > final["val_loss"] + 0.5
    assert final["val_loss"] == pytest.approx(infos[0]["val_loss"])
    assert env.unwrapped.run.evaluate() == pytest.approx(final["val_loss"])  # the model is the returned iterate
    assert final["val_ppl"] == pytest.approx(np.exp(final["val_loss"]))
    assert final["updates"] == 12 and final["epsilon"] == pytest.approx(infos[-1]["epsilon"])  # the run's epsilon


def test_the_terminal_reward_is_the_returned_iterates():
    reward = {"name": "final_only", "kwargs": {"scale": 1.0}}  # base loss - final loss, at the end only
    env = dp_gym.make(ENV, returned_model="best_public", secret_key=KEY, reward=reward, **SMALL)
    infos = _run(env, spoil_after=1, spoil=_scramble)
    base, final = env.unwrapped.run.base_val_loss, infos[-1]
    assert final["reward"] == pytest.approx(base - final["val_loss"])
    assert final["reward"] > base - final["last_val_loss"]


def test_a_failed_run_returns_its_best_finite_iterate():
    def poison(env):
        with torch.no_grad():
            next(iter(env.unwrapped.run.groups.all_parameters())).view(-1)[0] = float("nan")

    env = dp_gym.make(ENV, returned_model="best_public", secret_key=KEY, **SMALL)
    infos = _run(env, spoil_after=1, spoil=poison)
    assert "failure" in infos[-1] and infos[-1]["returned_updates"] == 4
    assert all(torch.isfinite(p).all() for p in env.unwrapped.run.groups.all_parameters())
    assert np.isfinite(infos[-1]["val_loss"]) and env.unwrapped.run.evaluate() == pytest.approx(infos[-1]["val_loss"])


def test_last_is_the_default_and_says_nothing_new():
    env = dp_gym.make(ENV, secret_key=KEY, **SMALL)
    infos = _run(env, spoil_after=1, spoil=_scramble)
    assert env.unwrapped.config.returned_model == "last"
    assert "returned_updates" not in infos[-1]
    assert env.unwrapped.run.evaluate() == pytest.approx(infos[-1]["val_loss"])


def test_only_a_run_that_returns_its_best_public_iterate_builds_a_selection_split():
    default = {**SMALL, "task_kwargs": {"n_train": 64, "n_val": 8}}  # the task's own n_select (64)
    assert not dp_gym.make(ENV, secret_key=KEY, **default).unwrapped.task.has_selection_split
    best = dp_gym.make(ENV, returned_model="best_public", secret_key=KEY, **default).unwrapped.task
    assert len(best.selection_records) > 32
    # a user's own n_select is kept: the split exists (evaluate_selection works) with `last` too
    assert len(dp_gym.make(ENV, secret_key=KEY, **SMALL).unwrapped.task.selection_records) == 8


def test_a_resumed_episode_keeps_its_best_iterate():
    env = dp_gym.make(ENV, returned_model="best_public", secret_key=KEY, **SMALL)
    env.reset(seed=3)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    env.step(action)
    _scramble(env)
    state = env.unwrapped.state_dict()
    resumed = dp_gym.make(ENV, returned_model="best_public", secret_key=KEY, **SMALL)
    resumed.unwrapped.load_state_dict(state)
    done = False
    while not done:
        _, _, terminated, truncated, info = resumed.unwrapped.step(action)
        done = terminated or truncated
    assert info["returned_updates"] == 4


def test_best_public_needs_a_selection_split():
    with pytest.raises(ConfigError, match="returned_model"):
        dp_gym.make(ENV, returned_model="best", **SMALL)
    own = {**SMALL, "task_kwargs": {"train_records": ["a b c"] * 8, "val_records": ["d e f"]}}
    with pytest.raises(ConfigError, match="returned_model 'best_public' needs a public selection split"):
        dp_gym.make(ENV, returned_model="best_public", **own)


def test_a_proxy_without_a_selection_split_is_a_config_error():
    class NoSelection(TextTask):
        @classmethod
        def proxy(cls, task_kwargs, corpus="public_notes", n_train=16, n_val=4, seed=0):
            return TextTask.proxy(task_kwargs, corpus, n_train, n_val, seed)

    from dp_gym.tasks import register_task

    register_task("text-without-selection", NoSelection, force=True)
    config = dp_gym.config_of(ENV, returned_model="best_public", task="text-without-selection", **SMALL)
    with pytest.raises(ConfigError, match="returned_model 'best_public'.*proxies of task NoSelection"):
        ProxyEnv(config)


def test_proxy_episodes_return_their_best_iterate_too():
    cheap = InstanceDistribution(train_sizes=(32,), n_val=4, max_length=24)
    env = ProxyEnv(dp_gym.config_of(ENV, returned_model="best_public", **SMALL), cheap, secret_key=KEY)
    assert env.task.has_selection_split
    infos = _run(env, spoil_after=1, spoil=_scramble)
    assert infos[-1]["returned_updates"] == 4


def test_the_selection_split_not_the_validation_split_chooses_the_iterate(monkeypatch):
    env = dp_gym.make(ENV, returned_model="best_public", secret_key=KEY, **SMALL)
    run = env.unwrapped.run
    # a selection split that prefers the iterate after 8 updates, whatever validation says
    monkeypatch.setattr(run, "evaluate_selection", lambda: {4: 3.0, 8: 1.0, 12: 2.0}[run.updates])
    infos = _run(env)
    assert infos[-1]["returned_updates"] == 8
    assert infos[-1]["val_loss"] == pytest.approx(infos[1]["val_loss"])  # reported on validation: the 8-update one


def test_the_selection_loss_is_the_selection_splits():
    task = TextTask(n_train=16, n_val=8, n_select=8, seed=2)
    model = task.build_model()
    only_selection = TextTask(train_records=task.train_records, val_records=task.selection_records, n_select=0)
    assert task.evaluate_selection(model) == pytest.approx(only_selection.evaluate(model))
    assert task.evaluate_selection(model) != pytest.approx(task.evaluate(model))


def test_an_episode_ended_by_a_non_finite_reward_returns_its_kept_iterate():
    from dp_gym.envs.rewards import register_reward

    def nan_after_eight(context):
        return float("nan") if context.updates == 8 else 0.0

    register_reward("test-nan-after-eight", nan_after_eight, force=True)
    env = dp_gym.make(ENV, returned_model="best_public", secret_key=KEY, reward={"name": "test-nan-after-eight"},
                      **SMALL)
    infos = _run(env, spoil_after=1, spoil=_scramble)
    assert len(infos) == 2 and "reward function" in infos[-1]["failure"]
    assert infos[-1]["returned_updates"] == 4
    assert env.unwrapped.run.evaluate() == pytest.approx(infos[0]["val_loss"])


def test_a_run_that_fails_at_once_returns_the_public_base_model():
    env = dp_gym.make(ENV, returned_model="best_public", secret_key=KEY, **SMALL)
    env.reset(seed=3)
    base = [p.detach().clone() for p in env.unwrapped.run.groups.all_parameters()]
    with torch.no_grad():
        next(iter(env.unwrapped.run.groups.all_parameters())).view(-1)[0] = float("inf")
    *_, terminated, _, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert terminated and "failure" in info and info["returned_updates"] == 0
    assert all(torch.equal(p, b) for p, b in zip(env.unwrapped.run.groups.all_parameters(), base, strict=True))
    assert info["val_loss"] == pytest.approx(env.unwrapped.run.base_val_loss)


def test_given_selection_records_must_be_held_out_of_training_and_validation():
    train, val = [f"private note {i}" for i in range(4)], ["public note"]
    with pytest.raises(ValueError, match="selection_records must be public records held out of train_records"):
        TextTask(train_records=train, val_records=val, selection_records=[train[0], "other"])
    with pytest.raises(ValueError, match="held out of val_records"):
        TextTask(train_records=train, val_records=val, selection_records=val)
    assert TextTask(train_records=train, val_records=val, selection_records=["other"]).has_selection_split


def test_a_proxy_of_a_text_task_subclass_stays_that_subclass():
    class Weighted(TextTask):  # takes records, not selection_records: built as itself, without a selection split
        def __init__(self, train_records=None, val_records=None, **kwargs):
            kwargs.pop("selection_records", None)
            super().__init__(train_records=train_records, val_records=val_records, **kwargs)

    proxy = Weighted.proxy({}, corpus="public_notes", n_train=12, n_val=4, seed=1, n_select=4)
    assert type(proxy) is Weighted and not proxy.has_selection_split
    assert type(TextTask.proxy({}, corpus="public_notes", n_train=12, n_val=4, seed=1, n_select=4)) is TextTask


def test_trajectories_hold_each_steps_last_iterate_and_results_the_returned_one():
    from agents.heuristics import make_controller
    from dp_gym.evaluation import run_episode

    env = dp_gym.make(ENV, returned_model="best_public", secret_key=KEY, **SMALL)
    result = run_episode(make_controller("action0", env.unwrapped), env, seed=3, name="action0")
    assert result.returned_updates in (0, 4, 8, 12)
    last = env.unwrapped._episode["last_val_loss"]
    assert result.trajectory[-1]["val_ppl"] == pytest.approx(np.exp(last))
    assert result.final_val_ppl == pytest.approx(np.exp(result.final_val_loss))
    returned = [p for p in result.trajectory if p["updates"] == result.returned_updates][0]
    assert returned["val_ppl"] == pytest.approx(result.final_val_ppl)


def test_the_returned_model_setting_does_not_change_a_keyed_runs_noise():
    """It only chooses among the run's releases: ``last`` and ``best_public`` are one run."""
    last = _run(dp_gym.make(ENV, secret_key=KEY, **SMALL))
    best = _run(dp_gym.make(ENV, returned_model="best_public", secret_key=KEY, **SMALL))
    assert [i["last_val_loss"] for i in best] == pytest.approx([i["val_loss"] for i in last], rel=1e-6)


def test_a_checkpoint_written_before_returned_model_existed_resumes():
    env = dp_gym.make(ENV, secret_key=KEY, **SMALL)
    env.reset(seed=3)
    env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    state = env.unwrapped.state_dict()
    del state["config"]["returned_model"]
    resumed = dp_gym.make(ENV, secret_key=KEY, **SMALL)
    resumed.unwrapped.load_state_dict(state)
    assert resumed.unwrapped.run.updates == 4
    state["config"]["returned_model"] = "best_public"
    with pytest.raises(ValueError, match="returned_model"):
        resumed.unwrapped.load_state_dict(state)
