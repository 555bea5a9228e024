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
