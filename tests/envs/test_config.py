import pytest

import dp_gym
from dp_gym import ConfigError, EnvConfig


@pytest.mark.parametrize("overrides, field", [
    ({"epsilon_budget": 3.0}, "unknown config key"),
    ({"epsilon": 0.0}, "epsilon must be > 0"),
    ({"epsilon": -1}, "epsilon must be > 0"),
    ({"epsilon": "three"}, "epsilon must be a number"),
    ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
    ({"delta": 0.0}, r"delta must be in \(0, 1\)"),
    ({"clip_range": [-1.0, 5.0]}, r"clip_range\[0\] must be > 0, got -1"),
    ({"clip_range": [2.0, 1.0]}, r"clip_range\[1\] must be >= clip_range\[0\]"),
    ({"clip_range": 3.0}, r"clip_range must be a pair"),
    ({"noise_range": [0.0, 5.0]}, r"noise_range\[0\] must be > 0"),
    ({"max_updates": 0}, "max_updates must be >= 1"),
    ({"max_updates": 2.5}, "max_updates must be an integer"),
    ({"updates_per_step": 10, "max_updates": 5}, "updates_per_step"),
    ({"budget_mode": "hope"}, r"budget_mode must be one of \['project', 'terminate'\]"),
    ({"observation": "peek"}, "observation must be one of"),
    ({"accountant": "gdp"}, "accountant must be one of"),
    ({"controls": {"clip": "control", "momentum": 1}}, "controls has unknown keys"),
    ({"controls": {"clip": "calibrated"}}, r"controls.clip must be one of \['control'\]"),
    ({"controls": {"prune": 1.5}}, r"controls.prune must be in \[0, 1\)"),
    ({"reward": {"name": "utility", "kwarg": {}}}, "reward has unknown keys"),
    ({"prune_max": 2.0}, r"prune_max must be in \[0, 1\]"),
    ({"sample_rate": 0.0}, r"sample_rate must be in \(0, 1\]"),
    ({"count_noise": -1.0}, "count_noise must be > 0 or null"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"seed": 3}, r"seed is no longer a config field: pass the public seed to env.reset\(seed=...\)"),
    ({"secure_mode": "yes"}, "secure_mode must be true or false"),
    ({"failure_reward": float("nan")}, "failure_reward must be finite"),
    ({"accountant": "prv"}, "accountant 'prv' with controls.noise 'control'"),
])
def test_bad_config_names_its_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        EnvConfig.from_dict({}, **overrides)


@pytest.mark.parametrize("overrides, field", [
    ({"task": "no_such_module:Task"}, "task: task 'no_such_module:Task' does not import"),
    ({"task": "unicorn"}, "task: unknown task 'unicorn'; registered"),
    ({"task_kwargs": {"n_trian": 64}}, r"task_kwargs has unknown key\(s\) \['n_trian'\] for task 'text'; allowed: .*'n_train'"),
    ({"reward": {"name": "happiness"}}, "reward.name: unknown reward 'happiness'; registered"),
    ({"reward": {"name": "utility", "kwargs": {"scael": 2.0}}},
     r"reward.kwargs has unknown key\(s\) \['scael'\] for reward 'utility'; allowed: \['privacy_cost', 'scale', 'terminal_weight'\]"),
    ({"token_pruning": {"rule": "cls_attention", "keep_ratio": 0.5}}, "token_pruning: task 'text' has no visual tokens"),
    ({"task": "vision", "token_pruning": {"rule": "magic", "keep_ratio": 0.5}}, "token_pruning.rule must be one of"),
])
def test_names_that_live_in_registries_are_checked_before_anything_is_built(overrides, field):
    with pytest.raises(ConfigError, match=field):
        dp_gym.validate_config(EnvConfig.from_dict({}, **overrides))


def test_a_reward_by_import_path_is_accepted_and_its_kwargs_checked():
    config = EnvConfig(reward={"name": "dp_gym.envs.rewards:final_only_reward", "kwargs": {"scale": 2.0}})
    assert dp_gym.validate_config(config) is config
    with pytest.raises(ConfigError, match=r"reward.kwargs has unknown key\(s\) \['privacy_cost'\]"):
        dp_gym.validate_config(EnvConfig(reward={"name": "dp_gym.envs.rewards:final_only_reward",
                                                 "kwargs": {"privacy_cost": 1.0}}))


def test_bad_override_through_gymnasium_make_fails_before_building_anything(monkeypatch):
    import dp_gym.tasks.text as text

    def explode(*args, **kwargs):
        raise AssertionError("a model was built before the config was validated")

    monkeypatch.setattr(text.TextTask, "__init__", explode)
    with pytest.raises(ConfigError, match="delta must be in"):
        dp_gym.make("dp_gym/TinyText-v0", delta=2.0)


def test_yaml_presets_load_and_controls_default():
    config = EnvConfig.from_yaml("envs_configs/tiny_text_clip_only.yaml")
    assert config.controlled == ["clip"] and config.controls["noise"] == "calibrated"
    assert EnvConfig().controlled == ["clip", "noise", "prune"]
    with pytest.raises(FileNotFoundError):
        EnvConfig.from_yaml("envs_configs/missing.yaml")


def test_config_round_trips_through_a_dict():
    config = EnvConfig(epsilon=8.0, controls={"clip": "control", "noise": 2.0, "prune": 0.0})
    assert EnvConfig.from_dict(config.to_dict()) == config


def test_prv_is_accepted_when_the_noise_is_fixed_in_advance():
    config = EnvConfig(accountant="prv", controls={"clip": "control", "noise": "calibrated", "prune": 0.0})
    assert not config.adaptive_noise and EnvConfig().adaptive_noise


def test_public_dict_redacts_every_record_list():
    records = ["Ada Abbott, 42, secret diagnosis", "Ben Becker, 51, another secret"]
    config = EnvConfig(task_kwargs={"train_records": records, "val_records": ["public text"], "n_val": 4})
    public = config.public_dict()
    assert public["task_kwargs"]["train_records"] == {"count": 2, "redacted": True}
    assert public["task_kwargs"]["val_records"] == {"count": 1, "redacted": True}
    assert public["task_kwargs"]["n_val"] == 4
    assert "secret" not in repr(public) and config.task_kwargs["train_records"] == records
