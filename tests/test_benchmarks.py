"""The benchmark scripts run against today's API (two of them silently broke when DPUpdater.step's
signature changed). Smallest settings, one repeat: behaviour only, never a number."""

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


def _deployment(seed: int, clips: list[float], spent: list[float], ppl: list[float]) -> dict:
    trajectory = [{"updates": 0, "budget_spent": 0.0, "val_ppl": 50.0}]
    trajectory += [{"updates": 4 * (i + 1), "budget_spent": s, "val_ppl": p, "clip": [c, c]}
                   for i, (c, s, p) in enumerate(zip(clips, spent, ppl, strict=True))]
    return {"env": "dp_gym/X-v0", "epsilon": 3.0, "controller": "sac", "seed": seed, "trajectory": trajectory}


def test_transfer_policy_reads_how_a_controller_spent_its_budget():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from transfer_policy import summarize
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    front_loaded = _deployment(0, [0.4, 0.4, 0.1, 0.1], [0.5, 0.8, 0.9, 1.0], [30.0, 20.0, 15.0, 12.0])
    even = _deployment(1, [0.2, 0.2, 0.4, 0.4], [0.25, 0.5, 0.75, 1.0], [40.0, 30.0, 20.0, 14.0])
    (row,) = summarize([front_loaded, even])
    assert row["seeds"] == 2 and row["controller"] == "sac"
    assert row["spent@0.25"] == (0.5 + 0.25) / 2 and row["spent@0.75"] == (0.9 + 0.75) / 2
    assert row["ppl@0.5"] == (20.0 + 30.0) / 2 and row["ppl@1"] == (12.0 + 14.0) / 2
    assert row["clip_early"] == pytest.approx(0.3) and row["clip_late"] == pytest.approx(0.25)
