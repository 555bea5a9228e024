"""RL Baselines3 Zoo trains on a public-proxy id with the shipped hyper-parameter file, as a user
types it, and its `enjoy` runs the saved model (needs the `zoo` extra)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from dp_gym.cli import main

# rl_zoo3 runs in subprocesses only: importing it here would patch Gymnasium's TimeLimit for every test
pytestmark = pytest.mark.skipif(importlib.util.find_spec("rl_zoo3") is None, reason="needs the zoo extra")

ENV = "dp_gym/TinyTextFlatScheduleProxy-v0"
TINY = ["--env-kwargs", "proxy:{'train_sizes':[32],'n_val':4,'max_updates':[8]}", "updates_per_step:2"]


def zoo(*arguments: str, cwd) -> str:
    process = subprocess.run([sys.executable, "-m", *arguments], cwd=cwd, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout


@pytest.mark.slow
def test_rl_zoo_trains_on_a_proxy_id_with_the_shipped_file_then_enjoy_and_a_private_deployment(tmp_path, capsys):
    assert main(["algos", "--path", "sac"]) == 0
    conf = capsys.readouterr().out.strip()
    assert conf.endswith("sac.yaml")
    out = zoo("rl_zoo3.train", "--algo", "sac", "--env", ENV, "--gym-packages", "dp_gym", "-conf", conf, "-n", "24",
              "--hyperparams", "learning_starts:8", "batch_size:8", "buffer_size:200", "-f", "logs", "--seed", "0",
              *TINY, cwd=tmp_path)
    assert "n_updates" in out  # the shipped file was read: gradient updates happened within 24 steps
    (model,) = tmp_path.glob("logs/sac/*/dp_gym-TinyTextFlatScheduleProxy-v0.zip")
    out = zoo("rl_zoo3.enjoy", "--algo", "sac", "--env", ENV, "--gym-packages", "dp_gym", "-f", "logs", "--exp-id", "1",
              "-n", "8", "--no-render", *TINY, cwd=tmp_path)
    assert "Mean reward" in out
    small = '{"task_kwargs": {"n_train": 64, "n_val": 8}, "max_updates": 8}'
    assert main(["compare", "--env", "dp_gym/TinyTextFlatSchedule-v0", "--controllers", f"sac:{model}", "--seeds", "1",
                 "--env-overrides", small, "--out", str(tmp_path / "deployed")]) == 0
    assert (tmp_path / "deployed" / "results.json").exists()
