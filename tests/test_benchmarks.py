"""The benchmark scripts run against today's API (two of them silently broke when DPUpdater.step's
signature changed). Smallest settings, one repeat: behaviour only, never a number."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arguments", [
    ["benchmarks/dp_step.py", "--only", "tiny", "--repeats", "1", "--batch", "4", "--seq", "16", "--threads", "1"],
    ["benchmarks/token_pruning.py", "--no-utility", "--repeats", "1", "--batch", "4"],
], ids=["dp_step", "token_pruning"])
def test_a_benchmark_runs_at_its_smallest_setting(arguments):
    process = subprocess.run([sys.executable, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "Opacus" in process.stdout


def _benchmark(name: str):
    """A script of benchmarks/ as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _deployment(seed: int, clips: list[float], spent: list[float], ppl: list[float]) -> dict:
    trajectory = [{"updates": 0, "budget_spent": 0.0, "val_ppl": 50.0}]
    trajectory += [{"updates": 4 * (i + 1), "budget_spent": s, "val_ppl": p, "clip": [c, c]}
                   for i, (c, s, p) in enumerate(zip(clips, spent, ppl, strict=True))]
    return {"env": "dp_gym/X-v0", "epsilon": 3.0, "controller": "sac", "seed": seed, "trajectory": trajectory}


def test_transfer_policy_reads_how_a_controller_spent_its_budget():
    summarize = _benchmark("transfer_policy").summarize
    front_loaded = _deployment(0, [0.4, 0.4, 0.1, 0.1], [0.5, 0.8, 0.9, 1.0], [30.0, 20.0, 15.0, 12.0])
    even = _deployment(1, [0.2, 0.2, 0.4, 0.4], [0.25, 0.5, 0.75, 1.0], [40.0, 30.0, 20.0, 14.0])
    (row,) = summarize([front_loaded, even])
    assert row["seeds"] == 2 and row["controller"] == "sac"
    assert row["spent@0.25"] == (0.5 + 0.25) / 2 and row["spent@0.75"] == (0.9 + 0.75) / 2
    assert row["ppl@0.5"] == (20.0 + 30.0) / 2 and row["ppl@1"] == (12.0 + 14.0) / 2
    assert row["clip_early"] == pytest.approx(0.3) and row["clip_late"] == pytest.approx(0.25)


def test_proxy_check_runs_from_the_command_line():
    process = subprocess.run([sys.executable, "benchmarks/proxy_check.py", "--env", "dp_gym/TinyTextFlatSchedule-v0",
                              "--controllers", "vanilla", "--instances", "1", "--max-updates", "4", "--threads", "1"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "| action0 | +0.0% |" in process.stdout and "| vanilla |" in process.stdout


def test_transfer_reuses_tuning_only_of_the_same_proxies_and_episodes(tmp_path):
    earlier_tuning = _benchmark("controller_transfer").earlier_tuning
    from dp_gym.envs import InstanceDistribution

    tuned = {"vanilla": [{"clip": 0.1}, {"learning_rate": 0.002}]}
    proxy = InstanceDistribution().to_dict()
    proxy.pop("paired")  # written before the field existed: the same (unpaired) proxies
    path = tmp_path / "transfer.json"
    path.write_text(json.dumps({"tuned": {"dp_gym/X-v0": tuned}, "episodes": {"dp_gym/X-v0": 40}, "proxy": proxy}))
    assert earlier_tuning(path, "dp_gym/X-v0", 40) == {"vanilla": ({"clip": 0.1}, {"learning_rate": 0.002})}
    with pytest.raises(SystemExit, match="tune again"):
        earlier_tuning(path, "dp_gym/X-v0", 80)
    path.write_text(json.dumps({"tuned": {"dp_gym/X-v0": tuned}, "episodes": {"dp_gym/X-v0": 40},
                                "proxy": {**proxy, "train_sizes": [64]}}))
    with pytest.raises(SystemExit, match="other proxies"):
        earlier_tuning(path, "dp_gym/X-v0", 40)


def test_transfer_tunes_the_baselines_with_every_proxy_episode_sac_used():
    sac_proxy_episodes = _benchmark("controller_transfer").sac_proxy_episodes
    assert sac_proxy_episodes(40, paired=False, selection=None) == {"learning": 40, "twins": 0, "selection": 0,
                                                                     "total": 40}
    # 8 held-out instances x (3 distinct checkpoints + action 0)
    selection = {"metrics": {name: [1.0] * 8 for name in ("action0", "sac:a", "sac:b", "sac:c")}}
    assert sac_proxy_episodes(40, paired=True, selection=selection) == {"learning": 40, "twins": 40,
                                                                        "selection": 32, "total": 112}
