"""examples/rllib_ppo.py trains RLlib's PPO for one iteration at tiny size (needs the rllib extra)."""

import json
import os
import subprocess
import sys

import pytest

TINY_ENV = {"updates_per_step": 2, "proxy": {"train_sizes": [32], "n_val": 4}}


@pytest.mark.slow
def test_rllib_ppo_example_runs_one_iteration(tmp_path):
    pytest.importorskip("ray.rllib.algorithms.ppo", reason="RLlib is not installed: pip install 'dp-gym[rllib]' (in its own venv)")
    command = [sys.executable, "examples/rllib_ppo.py", "--iterations", "1", "--max-updates", "8",
               "--train-batch-size", "16", "--env-config", json.dumps(TINY_ENV), "--out", str(tmp_path / "ckpt")]
    process = subprocess.run(command, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert process.returncode == 0, process.stderr[-3000:]
    assert "iteration 1: episode return mean" in process.stdout, process.stdout[-2000:]
    assert "rllib iterations done" in process.stdout, process.stdout[-2000:]
    assert (tmp_path / "ckpt" / "rllib_checkpoint.json").exists()
