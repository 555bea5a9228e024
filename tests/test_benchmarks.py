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
    sys.modules[name] = module  # (a dataclass resolves its annotations through its module)
    spec.loader.exec_module(module)
    return module


def _deployment(seed: int, clips: list[float], spent: list[float], ppl: list[float]) -> dict:
    trajectory = [{"updates": 0, "budget_spent": 0.0, "val_ppl": 50.0}]
    trajectory += [{"updates": 4 * (i + 1), "budget_spent": s, "val_ppl": p, "clip": [c, c]}
                   for i, (c, s, p) in enumerate(zip(clips, spent, ppl, strict=True))]
    return {"env": "dp_gym/X-v0", "epsilon": 3.0, "controller": "sac", "seed": seed, "trajectory": trajectory,
            "final_val_ppl": ppl[-1]}


def test_transfer_policy_reads_how_a_controller_spent_its_budget():
    summarize = _benchmark("transfer_policy").summarize
    front_loaded = _deployment(0, [0.4, 0.4, 0.1, 0.1], [0.5, 0.8, 0.9, 1.0], [30.0, 20.0, 15.0, 12.0])
    even = _deployment(1, [0.2, 0.2, 0.4, 0.4], [0.25, 0.5, 0.75, 1.0], [40.0, 30.0, 20.0, 14.0])
    (row,) = summarize([front_loaded, even])
    assert row["seeds"] == 2 and row["controller"] == "sac"
    assert row["spent@0.25"] == (0.5 + 0.25) / 2 and row["spent@0.75"] == (0.9 + 0.75) / 2
    assert row["ppl@0.5"] == (20.0 + 30.0) / 2 and row["ppl@1"] == (12.0 + 14.0) / 2
    assert row["clip_early"] == pytest.approx(0.3) and row["clip_late"] == pytest.approx(0.25)
    assert row["returned_at"] == 1.0 and row["returned_ppl"] == (12.0 + 14.0) / 2  # the last iterates


def test_transfer_policy_says_where_the_returned_iterate_was():
    returned_at = _benchmark("transfer_policy").returned_update
    best = _deployment(0, [0.1] * 4, [0.25, 0.5, 0.75, 1.0], [30.0, 20.0, 25.0, 28.0])
    assert returned_at({**best, "returned_updates": 8}) == 8
    # a run written before ``returned_updates``: its final point repeated the returned iterate's
    best["trajectory"][-1]["val_ppl"] = best["final_val_ppl"] = 20.0
    assert returned_at(best) == 8


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


def _deployment_record(controller: str, seed: int, epsilon: float, ppl: float) -> dict:
    privacy = {"epsilon": epsilon, "delta": 1e-5, "epsilon_budget": epsilon, "epsilon_spent": epsilon,
               "accounting": "rdp", "adaptive": True, "updates": 4, "sample_rate": 0.05, "privacy_valid": True,
               "epsilon_scope": "end to end", "private_episodes": 1, "history": []}
    return {"env": "dp_gym/TinyTextBudgetSchedule-v0", "epsilon": epsilon, "controller": controller, "seed": seed,
            "final_val_loss": 1.0, "final_val_ppl": ppl, "base_val_ppl": 100.0, "updates": 4, "steps": 1,
            "wall_time_s": 1.0, "privacy": privacy}


class _RecordingBackend:
    """Runs nothing: answers every job with a fixed deployment and remembers which jobs it got."""

    def __init__(self):
        self.keys, self.overrides = [], {}

    def run(self, jobs, progress=None):
        from dp_gym.utils.backends import Outcome

        self.keys += [job.key for job in jobs]
        self.overrides.update({job.key: job.kwargs["overrides"] for job in jobs})
        return [Outcome(job.key, {k: v for k, v in _deployment_record(job.kwargs["name"], job.kwargs["seed"], 3.0,
                                                                        50.0).items() if k not in ("env", "epsilon")})
                for job in jobs]


def _earlier_run(folder: Path, transfer: dict, deployments: list[dict]) -> Path:
    folder.mkdir()
    (folder / "transfer.json").write_text(json.dumps(transfer))
    (folder / "deployments.json").write_text(json.dumps({"deployments": deployments}))
    return folder


def test_transfer_reuses_an_earlier_runs_deployment_only_of_the_same_controller(tmp_path):
    transfer = _benchmark("controller_transfer")
    env_id = "dp_gym/TinyTextBudgetSchedule-v0"
    tuned = {"vanilla": [{"clip": 0.1}, {"learning_rate": 0.002}], "adaptive_quantile": [{}, {}]}
    # a run in the format before the `specs` field: its SAC is what its selection chose
    old_format = _earlier_run(tmp_path / "old", {
        "tuned": {env_id: tuned}, "selections": {env_id: {"chosen": "sac:old/model.zip"}},
        "args": {"sac_model": "old/model.zip", "selected": True}},
        [_deployment_record(name, seed, epsilon, 40.0) for name in ("vanilla", "adaptive_quantile", "sac")
         for seed in (1000, 1001) for epsilon in (3.0, 8.0)])
    now = {"vanilla": ({"clip": 0.1}, {"learning_rate": 0.004}),  # tuned differently now: deploy again
           "adaptive_quantile": ({}, {})}
    source = transfer.ReuseSource.parse(str(old_format), tmp_path / "out")
    backend = _RecordingBackend()
    results, reused = transfer.deploy_cell(backend, env_id, 3.0, now, "sac:old/model.zip", [1000, 1001],
                                           reuse=[source])
    assert sorted(backend.keys) == ["vanilla/seed=1000", "vanilla/seed=1001"]
    assert set(reused) == {"adaptive_quantile/seed=1000", "adaptive_quantile/seed=1001", "sac/seed=1000",
                           "sac/seed=1001"}
    assert [(r.controller, r.seed, r.final_val_ppl) for r in results] == [
        ("vanilla", 1000, 50.0), ("vanilla", 1001, 50.0), ("adaptive_quantile", 1000, 40.0),
        ("adaptive_quantile", 1001, 40.0), ("sac", 1000, 40.0), ("sac", 1001, 40.0)]
    # another SAC, or another epsilon's cell: nothing to reuse
    assert set(transfer.reusable_deployments([source], env_id, 3.0, transfer.cell_specs(now, "sac:new/model.zip"))) \
        == {("adaptive_quantile", 1000), ("adaptive_quantile", 1001)}
    assert transfer.reusable_deployments([source], env_id, 1.0, transfer.cell_specs(now, "sac:old/model.zip")) == {}

    # today's format names its specs and its model's sha256: a model retrained at the same path is another model
    model = tmp_path / "model.zip"
    model.write_bytes(b"the model deployed then")
    specs = transfer.cell_specs(now, f"sac:{model}")
    new_format = _earlier_run(tmp_path / "new", {"specs": {env_id: specs},
                                                 "model_sha256": {env_id: transfer.model_digest(f"sac:{model}")}},
                              [_deployment_record("sac", 1000, 3.0, 30.0), _deployment_record("vanilla", 1001, 3.0, 35.0)])
    newer = transfer.ReuseSource.parse(str(new_format), tmp_path / "out")
    assert set(transfer.reusable_deployments([newer], env_id, 3.0, specs)) == {("sac", 1000), ("vanilla", 1001)}
    # a controller reused for one seed and deployed for the other
    backend = _RecordingBackend()
    results, reused = transfer.deploy_cell(backend, env_id, 3.0, {"vanilla": now["vanilla"]}, f"sac:{model}",
                                           [1000, 1001], reuse=[newer])
    assert sorted(backend.keys) == ["sac/seed=1001", "vanilla/seed=1000"] and len(results) == 4
    model.write_bytes(b"retrained at the same path")
    assert set(transfer.reusable_deployments([newer], env_id, 3.0, specs)) == {("vanilla", 1001)}

    # two runs with different draws of one deployment: no choosing between them, unless restricted
    other = _earlier_run(tmp_path / "other", {"specs": {env_id: specs}},
                         [_deployment_record("vanilla", 1001, 3.0, 99.0)])
    with pytest.raises(SystemExit, match="hold different deployments"):
        transfer.reusable_deployments([newer, transfer.ReuseSource.parse(str(other), tmp_path / "out")],
                                      env_id, 3.0, specs)
    restricted = transfer.ReuseSource.parse(f"{other}:sac", tmp_path / "out")
    assert restricted.controllers == {"sac"}
    assert transfer.reusable_deployments([newer, restricted], env_id, 3.0, specs)[("vanilla", 1001)][1] == str(new_format)
    with pytest.raises(SystemExit, match="own --out"):
        transfer.ReuseSource.parse(str(other), other)


def test_transfer_set_gives_every_controller_the_same_config_fields(tmp_path):
    transfer = _benchmark("controller_transfer")
    env_id = "dp_gym/TinyTextBudgetSchedule-v0"
    best = {"returned_model": "best_public"}
    assert transfer.parse_overrides(["returned_model=best_public", "max_updates=40"]) == {**best, "max_updates": 40}
    for bad in (["returned_model=best"], ["no_such_field=1"], ["returned_model"]):
        with pytest.raises(SystemExit, match="returned_model|no_such_field"):
            transfer.parse_overrides(bad)
    for cell_field in ("epsilon=8", "sample_rate=0.1"):  # would not reach the proxies' tuning alike
        with pytest.raises(SystemExit, match=cell_field.partition("=")[0]):
            transfer.parse_overrides([cell_field])
    assert transfer.parse_overrides(["learning_rate=1e-3"]) == {"learning_rate": 0.001}  # YAML reads 1e-3 as text
    # an earlier run without --set: its deployments are of other configs, and its tuning too
    plain = {"vanilla": ({"clip": 0.1}, {"learning_rate": 0.002}), "adaptive_quantile": ({}, {})}
    earlier = _earlier_run(tmp_path / "plain", {"specs": {env_id: transfer.cell_specs(plain, "action0")},
                                                "tuned": {env_id: plain}, "episodes": {env_id: 40}},
                           [_deployment_record(name, 1000, 3.0, 40.0) for name in ("vanilla", "adaptive_quantile",
                                                                                     "sac")])
    with pytest.raises(SystemExit, match="tune again"):
        transfer.earlier_tuning(earlier / "transfer.json", env_id, 40, best)
    tuned = {"vanilla": ({"clip": 0.1}, {**best, "learning_rate": 0.002}), "adaptive_quantile": ({}, dict(best))}
    backend = _RecordingBackend()
    transfer.deploy_cell(backend, env_id, 3.0, tuned, "action0", [1000],
                         reuse=[transfer.ReuseSource.parse(str(earlier), tmp_path / "out")], overrides=best)
    assert sorted(backend.keys) == ["adaptive_quantile/seed=1000", "sac/seed=1000", "vanilla/seed=1000"]
    assert all(config["returned_model"] == "best_public" for config in backend.overrides.values())
    assert backend.overrides["vanilla/seed=1000"]["learning_rate"] == 0.002
