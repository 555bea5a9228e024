"""Privacy of the training and online paths, and exact resumption of training."""

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.online import finetune_online
from agents.rl import load_policy, train
from dp_gym.cli import main
from dp_gym.engine.randomness import SECRET_KEY_ENV

SMALL = {"task_kwargs": {"n_train": 64, "n_val": 8}, "max_updates": 8, "updates_per_step": 2}
KEY = "dp-gym-test-secret-key-0001"
TINY_SAC = {"learning_starts": 2, "batch_size": 4}


def test_online_mode_runs_exactly_one_private_episode_when_the_budget_ends_it_early(tmp_path):
    # low noise only: every step is projected onto the budget, which the first steps spend
    early = {**SMALL, "epsilon": 0.3, "noise_range": [1.0, 1.5], "max_updates": 40, "updates_per_step": 4,
             "count_noise": None, "loss_noise": None}
    report = finetune_online("dp_gym/TinyText-v0", "sac", tmp_path, env_overrides=early)
    assert report["private_episodes"] == 1 and report["updates"] < 40
    assert report["epsilon"] == 0.3 and report["epsilon_spent"] <= 0.3
    assert report["epsilon_scope"].startswith("end to end: one private episode")
    saved = json.loads((tmp_path / "privacy_report.json").read_text())
    assert saved["private_episodes"] == 1 and saved["updates"] == report["updates"]


SECRET_RECORDS = [f"Quimbleford Zyxwvut record {i}: diagnosis Frobnitz-{i}, account 99{i:04d}" for i in range(24)]
PUBLIC_RECORDS = [f"Public validation sentence number {i} about the weather." for i in range(4)]


def _contents(path: Path) -> bytes:
    """A file's bytes, with zip members (SB3 models) unpacked."""
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return b"".join(archive.read(name) for name in archive.namelist())
    return data


def test_private_records_never_appear_in_results_run_or_checkpoint_metadata_files(tmp_path):
    overrides = {**SMALL, "task_kwargs": {"train_records": SECRET_RECORDS, "val_records": PUBLIC_RECORDS,
                                          "max_length": 32}}
    train("dp_gym/TinyText-v0", "sac", timesteps=4, out=tmp_path / "train", env_overrides=overrides,
          checkpoint_every=2, progress_bar=False, hyperparams=TINY_SAC)
    assert main(["compare", "--controllers", "vanilla", "--seeds", "1", "--env-overrides", json.dumps(overrides),
                 "--out", str(tmp_path / "compare")]) == 0
    assert main(["tune-vanilla", "--clips", "0.3", "--env-overrides", json.dumps(overrides),
                 "--out", str(tmp_path / "tune")]) == 0
    finetune_online("dp_gym/TinyText-v0", "vanilla", tmp_path / "online", env_overrides=overrides)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".safetensors"]
    names = {p.name for p in written}
    assert {"run.json", "results.json", "results.csv", "results.md", "tune_vanilla.json", "privacy_report.json",
            "training_state.pt", "model.zip"} <= names
    for path in written:
        contents = _contents(path)
        assert b"Quimbleford" not in contents and b"Frobnitz" not in contents, path
    run = json.loads((tmp_path / "train" / "run.json").read_text())
    assert run["env_overrides"]["task_kwargs"]["train_records"] == {"count": 24, "redacted": True}


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from stable_baselines3.common.callbacks import BaseCallback
from agents.rl import train

out = Path(sys.argv[1])

class KillAfterCheckpoint(BaseCallback):
    def _on_rollout_start(self):
        if (out / "checkpoints" / "step_8").exists():
            os.kill(os.getpid(), signal.SIGKILL)
    def _on_step(self):
        return True

train("dp_gym/TinyText-v0", "sac", timesteps=12, out=out, env_overrides={overrides}, checkpoint_every=4,
      progress_bar=False, hyperparams={hyperparams}, callbacks=[KillAfterCheckpoint()])
"""


def _buffer(path: Path):
    from stable_baselines3 import SAC

    model = SAC.load(path.parent / "model.zip")
    model.load_replay_buffer(path)
    buffer = model.replay_buffer
    return {name: getattr(buffer, name)[: buffer.size()] for name in
            ("observations", "actions", "rewards", "next_observations", "dones")}


def test_a_run_killed_at_a_checkpoint_resumes_to_the_same_buffer_and_policy(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_KEY_ENV, KEY)
    overrides = {**SMALL, "max_updates": 10}  # 5-step episodes: the kill at step 8 falls inside an episode
    uninterrupted = train("dp_gym/TinyText-v0", "sac", timesteps=12, out=tmp_path / "whole", env_overrides=overrides,
                          checkpoint_every=4, progress_bar=False, hyperparams=TINY_SAC)

    script = KILLED_RUN.format(overrides=repr(overrides), hyperparams=repr(TINY_SAC))
    process = subprocess.run([sys.executable, "-c", script, str(tmp_path / "killed")], capture_output=True,
                             text=True, timeout=300, env={**os.environ, SECRET_KEY_ENV: KEY})
    assert process.returncode == -9, process.stderr[-2000:]  # SIGKILL, right after checkpoint 8
    assert not (tmp_path / "killed" / "model.zip").exists()
    resumed = train("dp_gym/TinyText-v0", "sac", timesteps=12, out=tmp_path / "killed", resume=tmp_path / "killed",
                    env_overrides=overrides, checkpoint_every=4, progress_bar=False)

    whole = _buffer(tmp_path / "whole" / "checkpoints" / "step_12" / "replay_buffer.pkl")
    again = _buffer(tmp_path / "killed" / "checkpoints" / "step_12" / "replay_buffer.pkl")
    assert len(whole["rewards"]) == 12
    for name in whole:
        np.testing.assert_array_equal(whole[name], again[name], err_msg=name)
    expected, actual = load_policy(f"sac:{uninterrupted}").policy, load_policy(f"sac:{resumed}").policy
    for (name, a), b in zip(expected.state_dict().items(), actual.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_damaged_or_edited_checkpoint_falls_back_to_the_previous_one(tmp_path):
    out = tmp_path / "run"
    train("dp_gym/TinyText-v0", "sac", timesteps=8, out=out, env_overrides=SMALL, checkpoint_every=2,
          progress_bar=False, hyperparams=TINY_SAC, private_training=True)
    run = json.loads((out / "run.json").read_text())
    # the old protocol's cost, visible: up to 8 private episodes (one per step in the worst case), composed
    assert run["training_data"] == "private" and run["privacy"]["private_episodes"] == 8
    assert 3.0 < run["privacy"]["epsilon"] < 8 * 3.0 and "carries their composed epsilon" in run["epsilon_scope"]
    checkpoints = out / "checkpoints"
    model = checkpoints / "step_8" / "model.zip"
    model.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])  # truncated
    state_path = checkpoints / "step_6" / "training_state.pt"  # mid-episode: 4 updates made
    state = torch.load(state_path, weights_only=False)
    assert state["environment"]["env"]["run"]["updates"] == 4
    state["environment"]["env"]["run"]["budget"]["history"] = []  # an edit that would reset the budget
    torch.save(state, state_path)
    buffer = checkpoints / "step_4" / "replay_buffer.pkl"
    buffer.write_bytes(buffer.read_bytes()[:100])
    (checkpoints / ".tmp-step_10-123").mkdir()  # a half-written checkpoint of a crashed run: ignored

    lines = []
    train("dp_gym/TinyText-v0", "sac", timesteps=10, out=out, resume=out, env_overrides=SMALL, checkpoint_every=2,
          progress_bar=False, report=lines.append, private_training=True)
    assert len(lines) == 3 and all(line.endswith("trying the previous one") for line in lines)
    assert "step_8" in lines[0] and "step_4" in lines[2] and "UnpicklingError" in lines[2]
    assert "step_6" in lines[1] and "budget.history accounts 0 update(s), but the run made 4" in lines[1]
    assert json.loads((out / "run.json").read_text())["resumed_from_steps"] == 2

    for path in checkpoints.glob("step_*"):
        (path / "model.zip").write_bytes(b"not a zip")
    with pytest.raises(FileNotFoundError, match="no readable checkpoint"):
        train("dp_gym/TinyText-v0", "sac", timesteps=12, out=out, resume=out, env_overrides=SMALL,
              progress_bar=False, report=lambda line: None, private_training=True)


def test_a_deployment_reports_what_its_controller_carries_end_to_end(tmp_path):
    for where, private in (("proxy", False), ("private", True)):
        train("dp_gym/TinyTextFlat-v0", "sac", timesteps=3, out=tmp_path / where, env_overrides=SMALL,
              progress_bar=False, hyperparams=TINY_SAC, private_training=private)
    assert main(["compare", "--env", "dp_gym/TinyTextFlat-v0", "--env-overrides", json.dumps(SMALL), "--seeds", "1",
                 "--controllers", "vanilla", "vanilla:clip=0.3", f"sac:{tmp_path / 'proxy' / 'model.zip'}",
                 f"sac:{tmp_path / 'private' / 'model.zip'}", "--out", str(tmp_path / "cmp")]) == 0
    rows = {row["controller"]: row for row in json.loads((tmp_path / "cmp" / "results.json").read_text())["summary"]}
    default, tuned_elsewhere, proxy, private = rows.values()
    assert default["private_episodes"] == 1 and default["epsilon_scope"].startswith("end to end")
    assert tuned_elsewhere["epsilon_scope"] == "this episode only"  # its clip may have been tuned on private data
    assert proxy["private_episodes"] == 1 and proxy["epsilon"] == default["epsilon"] <= 3.0
    # trained on private data: 3 training episodes (worst case, one per step) plus the deployment, composed
    assert private["private_episodes"] == 4 and private["epsilon"] > proxy["epsilon"]
    assert "composed" in private["epsilon_scope"] and private["epsilon_budget"] is None


def test_private_training_counts_every_step_that_ran_and_every_evaluation(tmp_path):
    # PPO collects whole rollouts: asked for 6 steps with rollouts of 4, it runs 8; evaluations run too
    train("dp_gym/TinyTextFlat-v0", "ppo", timesteps=6, out=tmp_path, env_overrides=SMALL, progress_bar=False,
          hyperparams={"n_steps": 4, "batch_size": 4}, private_training=True, eval_every=4)
    run = json.loads((tmp_path / "run.json").read_text())
    use = json.loads((tmp_path / "private_use.json").read_text())
    assert use["steps"] == 8 and use["evaluations"] == 2
    assert run["privacy"]["private_episodes"] == 10
