"""The real-model presets (LoRA on a local GPT-2 / Llama checkpoint) run, train only adapters, and
say in one line what is missing when no checkpoint path is given."""

import gymnasium as gym
import pytest
import torch

import dp_gym
from dp_gym.cli import main
from dp_gym.models.lora import adapter_parameter_names
from dp_gym.models.spec import MODEL_PATH_VARIABLE, ModelSpec
from tests.conftest import REAL_MODEL_PRESETS

KEY = b"real-model-preset-test-key"


def small(env_id: str, **extra):
    kwargs = dict(dp_gym.config_of(env_id).task_kwargs)
    return dp_gym.make(env_id, task_kwargs={**kwargs, "n_train": 32, "n_val": 8}, max_updates=4, updates_per_step=2,
                       secret_key=KEY, **extra)


@pytest.mark.parametrize("env_id", sorted(REAL_MODEL_PRESETS))
def test_a_lora_preset_trains_only_its_adapters(env_id, model_path_for):
    model_path_for(env_id)
    env = small(env_id)
    env.reset(seed=0)
    model = env.unwrapped.run.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == adapter_parameter_names(model) and trainable
    assert all(group.split(".")[-2] in ("h", "layers") for group in env.unwrapped.run.groups.names)  # per block
    done = False
    while not done:
        observation, reward, terminated, truncated, info = env.step(env.action_space.sample() * 0)
        assert torch.isfinite(torch.as_tensor(observation)).all() and reward == reward
        done = terminated or truncated
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert moved and moved <= set(trainable)
    assert env.unwrapped.task.describe()["lora"]["r"] == 8


def test_without_a_model_path_the_error_names_the_variable(monkeypatch):
    monkeypatch.delenv(MODEL_PATH_VARIABLE, raising=False)
    with pytest.raises(ValueError, match=r"task_kwargs.model.path is read from \$DP_GYM_MODEL_PATH, which is not set"):
        gym.make("dp_gym/GPT2LoRA-v0")


def test_the_cli_says_in_one_line_what_is_missing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(MODEL_PATH_VARIABLE, "")  # unset (an empty value counts as unset)
    assert main(["evaluate", "--env", "dp_gym/LlamaLoRA-v0", "--policy", "vanilla", "--episodes", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "DP_GYM_MODEL_PATH" in error and "--model-path" in error
    assert main(["evaluate", "--env", "dp_gym/LlamaLoRA-v0", "--model-path", str(tmp_path / "missing"),
                 "--policy", "vanilla", "--episodes", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(tmp_path / "missing") in error


def test_model_path_on_the_cli_runs_the_preset(local_checkpoints, monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_PATH_VARIABLE, "")  # unset for the preset; --model-path's value is undone after
    overrides = '{"task_kwargs": {"model": {"path": "${DP_GYM_MODEL_PATH}", "lora": {"r": 2}}, "n_train": 32, ' \
                '"n_val": 8}, "max_updates": 2, "updates_per_step": 1}'
    assert main(["evaluate", "--env", "dp_gym/LlamaLoRA-v0", "--model-path", str(local_checkpoints["llama"]),
                 "--env-overrides", overrides, "--policy", "vanilla", "--episodes", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.json").is_file()


@pytest.mark.parametrize(("value", "message"), [
    ({"path": "x", "lora": {"r": 0}}, r"task_kwargs.model.lora.r must be an integer >= 1"),
    ({"path": "x", "lora": {"dropout": 1.5}}, r"task_kwargs.model.lora.dropout must be in \[0, 1\)"),
    ({"path": "x", "lora": {"alpha": float("nan")}}, r"task_kwargs.model.lora.alpha must be a finite number"),
    ({"path": "x", "lora": {"rank": 4}}, r"task_kwargs.model.lora has unknown keys \['rank'\]"),
    ({"path": "x", "dtype": "float8"}, r"task_kwargs.model.dtype must be one of"),
    ({"lora": {}}, r"task_kwargs.model.path is missing"),
    (42, r"task_kwargs.model must be 'tiny', a local folder, or a mapping"),
])
def test_model_spec_errors_name_the_field(value, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec.parse(value)


def test_a_train_that_fails_leaves_no_empty_run_folder(monkeypatch, tmp_path):
    import agents.rl

    def fail(directory, *args, **kwargs):
        assert directory.is_dir()  # the run folder exists when the failure comes
        raise RuntimeError("failed before the first checkpoint")

    monkeypatch.setattr(agents.rl, "AtomicCheckpoints", fail)
    out = tmp_path / "run"
    overrides = '{"task_kwargs": {"n_train": 32, "n_val": 8}, "max_updates": 4, "updates_per_step": 2}'
    arguments = ["train", "--env-overrides", overrides, "--timesteps", "2", "--no-progress",
                 "--proxy", '{"train_sizes": [32], "n_val": 4}']
    with pytest.raises(RuntimeError, match="failed before the first checkpoint"):
        main([*arguments, "--out", str(out)])
    assert not out.exists()
    kept = tmp_path / "mine"
    kept.mkdir()
    with pytest.raises(RuntimeError):
        main([*arguments, "--out", str(kept)])
    assert kept.is_dir()  # a folder the user had is never removed
