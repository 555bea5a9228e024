"""Choosing what to deploy on held-out public proxies: a run's checkpoints or action 0."""

import json
import zipfile

import numpy as np
import pytest

import agents.selection as selection
from agents.controllers import controller_factory, controller_prior
from agents.rl import train
from dp_gym.cli import main
from dp_gym.envs import InstanceDistribution

SMALL = {"task_kwargs": {"n_train": 64, "n_val": 8}, "max_updates": 8, "updates_per_step": 2}
KEY = "dp-gym-test-secret-key-0001"


def test_proxy_check_pairs_controllers_with_action_zero_on_public_instances():
    distribution = InstanceDistribution(train_sizes=(64,), max_updates=(8,), n_val=4)
    results = selection.proxy_check("dp_gym/TinyTextFlatSchedule-v0", ["vanilla:clip=0.1"], [3, 4, 3],
                                    distribution, secret_key=KEY)
    assert list(results) == ["action0", "vanilla:clip=0.1"]
    assert all(metrics.shape == (3,) and np.isfinite(metrics).all() for metrics in results.values())
    # with one key every controller meets the same instance and noise on a seed: vanilla at the
    # action-0 clip is action 0 (up to its action's rounding); seed 3 again is the same episode
    reference = results["action0"]
    np.testing.assert_allclose(results["vanilla:clip=0.1"], reference, rtol=1e-4)
    assert reference[0] == reference[2] != reference[1]


def test_the_lowest_geometric_mean_ratio_wins_and_action_zero_wins_ties(monkeypatch):
    outcomes = {"action0": [2.0, 4.0], "better": [1.0, 8.0 * 0.9], "worse": [4.0, 2.1], "same": [2.0, 4.0]}

    def fake_check(env_id, specs, seeds, distribution, key, **overrides):
        assert key is not None and set(distribution.seeds) == set(selection.HELD_OUT_DATA_SEEDS)
        return {name: np.array(outcomes[name]) for name in ["action0", *specs]}

    monkeypatch.setattr(selection, "proxy_check", fake_check)
    chosen = selection.select_controller("dp_gym/TinyTextFlat-v0", ["worse", "better"], instances=2)
    assert chosen.chosen == "better" and chosen.scores["action0"] == 0.0
    assert chosen.scores["better"] == pytest.approx(np.log(0.9) / 2)
    assert selection.select_controller("dp_gym/TinyTextFlat-v0", ["same", "worse"], instances=2).chosen == "action0"
    assert selection.score(np.array([np.nan, 1.0]), np.array([1.0, 1.0])) == np.inf  # a blown-up run never wins


def _resave(source, destination, date_time):
    """The same zip members, stamped with another save time (as SB3 does a second later)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(destination, "w") as new:
        for info in old.infolist():
            new.writestr(zipfile.ZipInfo(info.filename, date_time=date_time), old.read(info.filename))


def test_the_final_model_saved_after_the_last_checkpoint_is_one_candidate(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"algo": "sac"}))
    for step, payload in (("step_4", b"first"), ("step_8", b"last")):
        (tmp_path / "checkpoints" / step).mkdir(parents=True)
        with zipfile.ZipFile(tmp_path / "checkpoints" / step / "model.zip", "w") as archive:
            archive.writestr(zipfile.ZipInfo("policy.pth", date_time=(2026, 12, 6, 14, 25, 10)), payload)
    _resave(tmp_path / "checkpoints" / "step_8" / "model.zip", tmp_path / "model.zip", (2026, 12, 6, 14, 25, 12))
    assert (tmp_path / "model.zip").read_bytes() != (tmp_path / "checkpoints" / "step_8" / "model.zip").read_bytes()
    assert [spec.split("/")[-2:] for spec in selection.checkpoint_specs(tmp_path)] == [
        ["step_4", "model.zip"], ["step_8", "model.zip"]]
    # a model that differs in any member's bytes is a candidate of its own
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as archive:
        archive.writestr("policy.pth", b"last, trained on")
    assert len(selection.checkpoint_specs(tmp_path)) == 3


def test_select_chooses_among_a_runs_checkpoints_and_deploys_as_selected(tmp_path, monkeypatch):
    train("dp_gym/TinyTextFlatSchedule-v0", "sac", timesteps=8, out=tmp_path, env_overrides=SMALL, checkpoint_every=4,
          progress_bar=False, hyperparams={"learning_starts": 2, "batch_size": 4}, actor_init="zero")
    candidates = selection.checkpoint_specs(tmp_path)
    # the final model is step 8's checkpoint: one candidate
    assert [spec.split("/")[-2:] for spec in candidates] == [["step_4", "model.zip"], ["step_8", "model.zip"]]
    assert main(["select", str(tmp_path), "--instances", "2", "--threads", "1"]) == 0
    chosen = json.loads((tmp_path / "selection.json").read_text())
    assert set(chosen["scores"]) == {"action0", *candidates} and chosen["data_seeds"] == [101, 102, 103]
    assert chosen["chosen"] == min(chosen["scores"], key=chosen["scores"].get)
    assert all(len(metrics) == 2 for metrics in chosen["metrics"].values())
    # whatever was chosen deploys, and carries what the run's training carried: public proxies only
    assert callable(controller_factory(f"selected:{tmp_path}", "dp_gym/TinyTextFlatSchedule-v0"))
    for spec in (f"selected:{tmp_path}", candidates[0]):
        assert controller_prior(spec, 1e-5, "dp_gym/TinyTextFlatSchedule-v0").private_episodes == 0
    assert main(["select", str(tmp_path / "nope")]) == 2
    with pytest.raises(FileNotFoundError, match="run `dp-gym select"):
        controller_factory(f"selected:{tmp_path / 'checkpoints'}")
    # --export ships what was chosen as a self-contained controller, and refuses action 0
    outcomes = {"action0": [2.0, 2.0], candidates[0]: [1.0, 1.0]}
    monkeypatch.setattr(selection, "proxy_check",
                        lambda env_id, specs, *args, **kwargs: {name: np.array(outcomes.get(name, [3.0, 3.0]))
                                                                for name in ["action0", *specs]})
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "model.zip").write_text("an earlier export")  # replaced whole
    (shipped / "stale.txt").write_text("left by an earlier export")
    assert main(["select", str(tmp_path), "--instances", "2", "--export", str(shipped)]) == 0
    assert sorted(p.name for p in shipped.iterdir()) == ["model.zip", "run.json", "selection.json"]
    assert shipped.stat().st_mode & 0o777 == 0o755 and (shipped / "run.json").stat().st_mode & 0o777 == 0o644
    assert (shipped / "model.zip").read_bytes() == (tmp_path / "checkpoints" / "step_4" / "model.zip").read_bytes()
    assert json.loads((shipped / "run.json").read_text()) == json.loads((tmp_path / "run.json").read_text())
    evidence = json.loads((shipped / "selection.json").read_text())
    assert evidence["chosen_in_run"] == candidates[0] and evidence["chosen"] == "sac:model.zip"
    # the export is self-contained: it resolves from its own folder, and carries the run's report
    assert selection.selected_spec(shipped) == f"sac:{shipped / 'model.zip'}"
    assert callable(controller_factory(f"selected:{shipped}", "dp_gym/TinyTextFlatSchedule-v0"))
    assert controller_prior(f"selected:{shipped}", 1e-5, "dp_gym/TinyTextFlatSchedule-v0").private_episodes == 0
    outcomes[candidates[0]] = [4.0, 4.0]
    assert main(["select", str(tmp_path), "--instances", "2", "--export", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()
