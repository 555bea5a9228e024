"""Custom environments are first-class: the README's route, as a new user would take it."""

import json

import gymnasium as gym
import pytest
import yaml

import dp_gym
from agents.rl import train
from dp_gym.cli import main

USER_MODULE = '''
import gymnasium as gym
from dp_gym.tasks import TextTask

TICKETS = [f"Ticket {i}: printer on floor {i % 5} is jammed, user {i * 7 % 13} waited {i % 9} hours." for i in range(40)]


class TicketsTask(TextTask):
    def __init__(self, n_val: int = 4, max_length: int = 32):
        super().__init__(train_records=TICKETS, val_records=[f"Ticket about the coffee machine {i}." for i in range(n_val)],
                         max_length=max_length)


gym.register("mylab/Tickets-v0", entry_point="dp_gym:DPFineTuneEnv", max_episode_steps=3, kwargs={"config": {
    "task": "mylab_dpgym:TicketsTask", "max_updates": 6, "updates_per_step": 2, "epsilon": 2.0,
    "controls": {"clip": "control", "noise": "calibrated", "prune": 0.0},
    "reward": {"name": "mylab_dpgym.rewards:ppl_minus_eps", "kwargs": {"weight": 0.5}}}})
'''
USER_REWARDS = '''
def ppl_minus_eps(context, weight: float = 1.0) -> float:
    return (context.val_loss_before - context.val_loss) - weight * (context.epsilon - context.epsilon_before)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    package = tmp_path / "user" / "mylab_dpgym"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(USER_MODULE)
    (package / "rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path / "user"))
    return "mylab_dpgym"


def test_a_users_registered_env_works_with_every_entry_point(user_module, tmp_path):
    common = ["--env", "mylab/Tickets-v0", "--gym-packages", user_module]
    assert main(["train", *common, "--timesteps", "4", "--no-progress", "--out", str(tmp_path / "train")]) == 0
    model = tmp_path / "train" / "model.zip"
    assert model.exists() and json.loads((tmp_path / "train" / "run.json").read_text())["env_id"] == "mylab/Tickets-v0"
    assert main(["compare", *common, "--controllers", "vanilla", f"sac:{model}", "--seeds", "1",
                 "--out", str(tmp_path / "compare")]) == 0
    summary = json.loads((tmp_path / "compare" / "results.json").read_text())["summary"]
    assert [row["controller"] for row in summary] == ["vanilla", "sac"]
    assert all(row["epsilon"] <= 2.0 for row in summary)
    assert main(["evaluate", *common, "--policy", "vanilla", "--episodes", "1", "--out", str(tmp_path / "eval")]) == 0

    env = dp_gym.make("mylab/Tickets-v0")  # the library API, now that the module is imported
    assert env.unwrapped.config.reward["name"] == "mylab_dpgym.rewards:ppl_minus_eps"
    assert dp_gym.config_of("mylab/Tickets-v0").task == "mylab_dpgym:TicketsTask"
    train("mylab/Tickets-v0", "sac", timesteps=2, out=tmp_path / "api", progress_bar=False)


def test_module_colon_id_and_a_yaml_path_name_environments(user_module, tmp_path):
    assert dp_gym.resolve_env_id(f"{user_module}:mylab/Tickets-v0") == "mylab/Tickets-v0"
    config = dp_gym.config_of("dp_gym/TinyTextFlat-v0").to_dict()
    config.update(id="mylab/FlatYaml-v0", description="a YAML outside the package",
                  task_kwargs={"n_train": 32, "n_val": 4}, max_updates=4, updates_per_step=2)
    path = tmp_path / "flat.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["evaluate", "--env", str(path), "--policy", "vanilla", "--episodes", "1",
                 "--out", str(tmp_path / "yaml")]) == 0
    assert json.loads((tmp_path / "yaml" / "results.json").read_text())["summary"][0]["updates"] == 4


def test_an_id_that_is_not_a_dp_gym_env_is_a_clear_error(capsys):
    assert main(["evaluate", "--env", "CartPole-v1", "--policy", "vanilla"]) == 2
    assert "builds a CartPoleEnv, not a dp-gym DPFineTuneEnv" in capsys.readouterr().err
    with pytest.raises(ValueError, match="module 'gymnasium' registered no environment id 'mylab/Nope-v0'"):
        dp_gym.resolve_env_id("gymnasium:mylab/Nope-v0")
    assert "CartPole-v1" in gym.registry
