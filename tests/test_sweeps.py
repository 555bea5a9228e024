"""Sweep backends: jobs run here or as Ray Tune trials, with the same rows, contained failures and
Tune's own resume."""

import csv
import json
import math
import os
import sys
import textwrap

import pytest

import dp_gym
from agents.controllers import crashed_deployment
from dp_gym.cli import main
from dp_gym.evaluation import EpisodeResult, compare, summarize, write_report
from dp_gym.utils.backends import Job, LocalBackend, make_backend, parse_resources
from dp_gym.utils.redaction import WITHHELD, file_safe_error

KEY = "sweep-test-key-0123456789"
TINY = {"max_updates": 4, "updates_per_step": 2, "task_kwargs": {"n_train": 64, "n_val": 8}}
ENV = "dp_gym/TinyTextFlat-v0"


def _halve(x: float) -> float:
    if x < 0:
        raise ValueError(f"negative input {x}\nsecond line")
    return x / 2


def test_local_backend_keeps_order_and_contains_failures(capsys):
    jobs = [Job(f"j{x}", "tests.test_sweeps:_halve", {"x": x}) for x in (4, -1, 6)]
    outcomes = LocalBackend().run(jobs)
    assert [o.key for o in outcomes] == ["j4", "j-1", "j6"]
    assert [o.value for o in outcomes] == [2, None, 3]
    # a foreign exception's message may quote data: the outcome (what files get) names its type only,
    # the console gets the line
    assert outcomes[1].failed and outcomes[1].error == f"ValueError {WITHHELD}"
    assert "j-1: raised ValueError: negative input -1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unique; repeated: j4"):
        LocalBackend().run([jobs[0], jobs[0]])
    # in worker processes: the same outcomes, in the same order
    assert LocalBackend(workers=2).run(jobs) == outcomes


def test_only_dp_gyms_own_messages_reach_a_results_file():
    from dp_gym.config import ConfigError

    assert file_safe_error(ConfigError("epsilon must be > 0, got -1")) == "ConfigError: epsilon must be > 0, got -1"
    assert file_safe_error(KeyError("Patient Quimbleford, 1961")) == f"KeyError {WITHHELD}"


@pytest.mark.parametrize("arguments, message", [
    (dict(name="dask"), "--backend must be one of local, ray"),
    (dict(name="local", address="auto"), "--address and --resources are for --backend ray"),
    (dict(name="ray", out=None), "--backend ray needs --out"),
    (dict(name="ray", out="x", resources="{CPU: 1}"), "--resources must be a JSON object"),
    (dict(name="ray", out="x", resources='{"CPU": -1}'), "--resources CPU must be a non-negative number"),
    (dict(name="ray", out="x", resources='{"memory": 1}'), "some CPU or GPU"),
])
def test_backend_options_are_checked(arguments, message):
    with pytest.raises(ValueError, match=message):
        make_backend(**arguments)


def test_ray_never_receives_private_records(tmp_path):
    """Tune writes each trial's arguments into its experiment folder: records must not be among them."""
    from dp_gym.utils.backends import RayBackend

    records = {"task_kwargs": {"train_records": ["Quimbleford, a private note"], "n_val": 2}}
    job = Job("x", "tests.test_sweeps:_halve", {"x": 1, "overrides": records})
    with pytest.raises(ValueError, match="hold private records"):
        RayBackend(tmp_path).run([job])
    assert not (tmp_path / "ray").exists()


def test_resources_default_to_one_cpu():
    assert parse_resources(None) == {"CPU": 1.0}
    assert parse_resources('{"CPU": 1, "GPU": 0.25}') == {"CPU": 1.0, "GPU": 0.25}


def test_ray_backend_without_ray_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["compare", "--env", ENV, "--controllers", "vanilla", "--seeds", "1", "--backend", "ray",
                 "--out", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == ("dp-gym compare: error: --backend ray needs Ray Tune: "
                                               "pip install 'dp-gym[ray]'")


class _RaisesOnSecondAction:
    """Raises on the second action of every episode."""

    def __init__(self, env):
        self.size, self.calls = env.action_space.shape[0], 0

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        import numpy as np

        self.calls = 1 if episode_start[0] else self.calls + 1
        if self.calls == 2:
            raise RuntimeError("controller broke")
        return np.zeros(self.size, dtype=np.float32), state


def test_an_episode_that_raises_is_a_row_not_a_crash(tmp_path):
    from agents.controllers import controller_factory

    results = compare({"vanilla": controller_factory("vanilla"), "broken": _RaisesOnSecondAction},
                      lambda: dp_gym.make(ENV, **TINY), seeds=[0, 1])
    crashed = [r for r in results if r.controller == "broken"]
    assert [r.error for r in crashed] == [f"RuntimeError {WITHHELD}"] * 2
    budget = dp_gym.config_of(ENV, **TINY).epsilon
    assert all(r.epsilon == budget and math.isnan(r.final_val_ppl) for r in crashed)
    rows = {row["controller"]: row for row in summarize(results)}
    assert rows["broken"]["errors"] == 2 and rows["broken"]["episodes"] == 0
    assert rows["broken"]["epsilon"] == budget  # never below what the crashed episodes may have spent
    assert rows["vanilla"]["errors"] == 0 and math.isfinite(rows["vanilla"]["final_val_ppl"])
    paths = write_report(results, tmp_path, plots=False)
    assert "broken (2 raised)" in paths["markdown"].read_text()
    assert f"broken, seed 1: raised RuntimeError {WITHHELD}" in paths["markdown"].read_text()
    assert not [path for path in tmp_path.rglob("*") if path.is_file() and b"controller broke" in path.read_bytes()]


def test_a_crashed_deployment_whose_config_does_not_build_spent_nothing():
    result = crashed_deployment("x", 0, "ConfigError: bad", ENV, {"epsilon": -1})
    assert result.epsilon == 0.0 and result.privacy.private_episodes == 0


def test_episode_results_travel_as_json_exactly():
    result = crashed_deployment("x", 3, "E: y", ENV, TINY)
    again = EpisodeResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.privacy == result.privacy and again.error == result.error and again.seed == 3


# --------------------------------------------------------------------------------------- Ray
PROBE = '''
from pathlib import Path

from agents.heuristics import VanillaController

CALLS = Path({calls!r})


def Counted(env):
    """Plain DP-SGD that records each deployment it makes."""
    with (CALLS / "counted").open("a") as handle:
        handle.write("1")
    return VanillaController(env)


class _Flaky(VanillaController):
    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        if not (CALLS / "allow").exists():
            raise RuntimeError("flaky: not yet")
        return super().predict(observation, state, episode_start, deterministic)


def Flaky(env):
    """Raises until the file ``allow`` exists."""
    with (CALLS / "flaky").open("a") as handle:
        handle.write("1")
    return _Flaky(env)
'''


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray instance (2 CPUs) whose workers see the secret key and the probe module."""
    ray = pytest.importorskip("ray", reason="the Ray backend needs the `ray` extra (in `dev`)")
    folder = tmp_path_factory.mktemp("probe")
    (folder / "sweep_probe.py").write_text(textwrap.dedent(PROBE.format(calls=str(folder))))
    saved = {name: os.environ.get(name) for name in ("DP_GYM_SECRET_KEY", "PYTHONPATH")}
    os.environ["DP_GYM_SECRET_KEY"] = KEY
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), saved["PYTHONPATH"]]))
    sys.path.insert(0, str(folder))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield folder
    ray.shutdown()
    sys.path.remove(str(folder))
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _rows(folder):
    with (folder / "results.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(handle)]


def test_ray_backend_gives_the_local_rows_and_resumes(local_ray, tmp_path):
    base = ["compare", "--env", ENV, "--env-overrides", json.dumps(TINY), "--threads", "1"]
    two = ["--controllers", "vanilla", "adaptive_quantile", "--seeds", "2"]
    assert main([*base, *two, "--out", str(tmp_path / "local")]) == 0
    assert main([*base, *two, "--out", str(tmp_path / "ray"), "--backend", "ray"]) == 0
    local, remote = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert len(local) == 4 and local == remote  # same secret key: the same episodes, number for number
    assert len(list((tmp_path / "ray" / "ray").glob("compare-*"))) == 1  # Tune's experiment, to resume from

    # a trial that raises is a row with its error; the sweep goes on
    probe = [*base, "--controllers", "sweep_probe:Counted", "sweep_probe:Flaky", "--out", str(tmp_path / "flaky"),
             "--backend", "ray"]
    assert main([*probe, "--seeds", "1"]) == 0
    assert [row["error"] for row in _rows(tmp_path / "flaky")] == ["", f"RuntimeError {WITHHELD}"]
    # nor is its message in Tune's experiment folder (a failed trial's error.txt)
    files = [path for path in (tmp_path / "flaky").rglob("*") if path.is_file()]
    assert any(path.name == "error.txt" for path in files)
    assert not [path for path in files if b"flaky: not yet" in path.read_bytes()]
    # re-run with the same folder: Tune restores, the finished trial is skipped, the failed one runs again
    (local_ray / "allow").touch()
    assert main([*probe, "--seeds", "1"]) == 0
    assert [row["error"] for row in _rows(tmp_path / "flaky")] == ["", ""]
    assert (local_ray / "counted").read_text() == "1"  # finished: not run again
    assert (local_ray / "flaky").read_text() == "11"


PROXY = json.dumps({"train_sizes": [32], "n_val": 4, "max_updates": [4]})


def test_train_seeds_trains_one_run_per_seed(tmp_path, capsys):
    assert main(["train", "--env", ENV, "--seeds", "0", "1", "--timesteps", "4", "--checkpoint-every", "4",
                 "--proxy", PROXY, "--env-overrides", json.dumps({"updates_per_step": 2}), "--threads", "1",
                 "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "seeds.json").read_text())["runs"]
    assert set(runs) == {"seed=0", "seed=1"}
    for seed in (0, 1):
        assert runs[f"seed={seed}"]["model"] == str(tmp_path / f"seed_{seed}" / "model.zip")
        assert json.loads((tmp_path / f"seed_{seed}" / "run.json").read_text())["seed"] == seed
    assert main(["train", "--env", ENV, "--seeds", "0", "--resume", str(tmp_path)]) == 2
    assert "with --seeds, run the same command again" in capsys.readouterr().err


def test_ray_tunes_the_same_grid_and_trains_seeds(local_ray, tmp_path):
    tune = ["tune-vanilla", "--env", ENV, "--clips", "0.1", "1.0", "--proxy", PROXY, "--threads", "1",
            "--env-overrides", json.dumps({"updates_per_step": 2})]
    assert main([*tune, "--out", str(tmp_path / "local")]) == 0
    assert main([*tune, "--out", str(tmp_path / "ray"), "--backend", "ray"]) == 0
    local, remote = (json.loads((tmp_path / where / "tune_vanilla.json").read_text()) for where in ("local", "ray"))
    assert local["scores"] == remote["scores"] and local["best_clip"] == remote["best_clip"]
    assert len(list((tmp_path / "ray" / "ray").glob("tune-clip-*"))) == 1

    assert main(["train", "--env", ENV, "--seeds", "0", "1", "--timesteps", "4", "--checkpoint-every", "4",
                 "--proxy", PROXY, "--env-overrides", json.dumps({"updates_per_step": 2}),
                 "--out", str(tmp_path / "train"), "--backend", "ray"]) == 0
    assert all((tmp_path / "train" / f"seed_{seed}" / "model.zip").exists() for seed in (0, 1))


def test_train_seeds_keeps_the_runs_that_finished_and_says_which_raised(tmp_path, monkeypatch, capsys):
    import agents.rl

    real = agents.rl.train

    def train(**kwargs):
        if kwargs["seed"] == 1:
            raise RuntimeError("the [learner] diverged")
        return real(**kwargs)

    monkeypatch.setattr(agents.rl, "train", train)
    code = main(["train", "--env", ENV, "--seeds", "0", "1", "--timesteps", "2", "--checkpoint-every", "2",
                 "--proxy", PROXY, "--env-overrides", json.dumps({"updates_per_step": 2}), "--threads", "1",
                 "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2 and "1 of 2 training runs raised (seed=1)" in captured.err
    assert "seed=1: raised RuntimeError: the [learner] diverged" in captured.err  # the console has the line
    assert f"seed=1: raised RuntimeError {WITHHELD}" in captured.out
    runs = json.loads((tmp_path / "seeds.json").read_text())["runs"]
    assert runs["seed=1"] == {"error": f"RuntimeError {WITHHELD}"}
    assert (tmp_path / "seed_0" / "model.zip").exists()
