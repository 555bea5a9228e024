"""Every example runs at tiny size (real code paths, small numbers)."""

import subprocess
import sys

import pytest

TINY = {
    "custom_env.py": ["--max-updates", "8"],
    "train_sac.py": ["--total-timesteps", "6", "--max-updates", "8", "--out", "{tmp}/train_sac"],
    "online_finetune.py": ["--controller", "sac", "--max-updates", "8", "--out", "{tmp}/online"],
    "compare_algorithms.py": ["--timesteps", "4", "--seeds", "1", "--max-updates", "8", "--algos", "sac", "ppo", "tqc",
                              "--out", "{tmp}/compare"],
    "cleanrl_style_sac.py": ["--total-timesteps", "12", "--num-envs", "2", "--max-updates", "8",
                             "--learning-starts", "4", "--batch-size", "8"],
}
EXPECTED = {"custom_env.py": "epsilon", "train_sac.py": "vanilla", "online_finetune.py": "model saved",
            "compare_algorithms.py": "| tqc |", "cleanrl_style_sac.py": "episode return"}


@pytest.mark.parametrize("script", sorted(TINY))
def test_example_runs_at_tiny_size(script, tmp_path):
    arguments = [a.format(tmp=tmp_path) for a in TINY[script]]
    process = subprocess.run([sys.executable, f"examples/{script}", *arguments], capture_output=True, text=True,
                             timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    assert EXPECTED[script] in process.stdout, process.stdout[-2000:]
