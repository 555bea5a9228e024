import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dp_gym
from agents.online import finetune_online
from agents.rl import algorithm, load_hyperparams, load_policy, start_at_action_zero, train
from dp_gym.cli import main

SMALL = {"task_kwargs": {"n_train": 64, "n_val": 8}, "max_updates": 8, "updates_per_step": 2}


def scalars(directory: Path) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for events in directory.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, []).extend(e.value for e in accumulator.Scalars(tag))
    return values


def test_train_writes_tensorboard_epsilon_and_a_loadable_model_and_resumes(tmp_path):
    model_path = train("dp_gym/TinyText-v0", "sac", timesteps=8, out=tmp_path, env_overrides=SMALL,
                       checkpoint_every=4, progress_bar=False, hyperparams={"learning_starts": 2, "batch_size": 4})
    logged = scalars(tmp_path / "tb")
    assert len(logged["dp/epsilon"]) == 8
    assert all(spent <= budget for spent, budget in zip(logged["dp/epsilon"], logged["dp/epsilon_budget"], strict=True))
    assert len(set(logged["dp/epsilon_budget"])) > 1  # public proxy instances of several budgets
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["training_data"] == "public proxies" and run["privacy"]["private_episodes"] == 0
    assert run["privacy"]["epsilon"] == 0.0
    assert "dp/val_ppl" in logged and any(tag.startswith("clip/") for tag in logged)
    curve = (tmp_path / "episodes.csv").read_text().strip().splitlines()  # one learning-curve point an episode
    assert curve[0].startswith("timesteps,env,final_val_metric") and len(curve) - 1 == run["training_episodes"] >= 2
    ends = [int(row.split(",")[0]) for row in curve[1:]]
    assert ends == sorted(ends) and ends[-1] <= 8 and len(logged["episode/final_val_metric"]) >= 1
    model = load_policy(f"sac:{model_path}")
    env = dp_gym.make("dp_gym/TinyText-v0", **SMALL)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(action)
    assert {p.name for p in (tmp_path / "checkpoints" / "step_8").iterdir()} == {
        "model.zip", "replay_buffer.pkl", "training_state.pt"}

    # a new run into the same folder would mix its checkpoints with these (and a selection could pick one)
    with pytest.raises(FileExistsError, match="--resume"):
        train("dp_gym/TinyText-v0", "sac", timesteps=8, out=tmp_path, env_overrides=SMALL, progress_bar=False)
    train("dp_gym/TinyText-v0", "sac", timesteps=12, out=tmp_path, resume=tmp_path, env_overrides=SMALL,
          checkpoint_every=4, progress_bar=False)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["resumed_from_steps"] == 8
    resumed = load_policy(f"sac:{tmp_path / 'model.zip'}")
    assert resumed.num_timesteps == 12
    # every transition is in the checkpoint: none is lost at a checkpoint boundary
    resumed.load_replay_buffer(tmp_path / "checkpoints" / "step_12" / "replay_buffer.pkl")
    assert resumed.replay_buffer.size() == 12
    resumed_curve = (tmp_path / "episodes.csv").read_text().strip().splitlines()
    assert len(resumed_curve) > len(curve) and resumed_curve[: len(curve)] == curve  # the resumed run continues it
    ends = [int(row.split(",")[0]) for row in resumed_curve[1:]]
    assert ends == sorted(ends) and ends[-1] <= 12
    assert main(["plot", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path / "checkpoints")]) == 2  # not a training run: one clear line


def test_paired_training_logs_its_learning_curve_against_action_zero(tmp_path):
    proxy = {"paired": True, "train_sizes": [32], "n_val": 4, "max_length": 24}
    train("dp_gym/TinyTextFlat-v0", "sac", timesteps=8, out=tmp_path, env_overrides=SMALL, checkpoint_every=8,
          progress_bar=False, hyperparams={"learning_starts": 2, "batch_size": 4, "ent_coef": 0.01}, proxy=proxy)
    relative = scalars(tmp_path / "tb")["episode/val_metric_vs_action0"]
    with (tmp_path / "episodes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(float(row["reference_val_metric"]) > 1 for row in rows)
    expected = [float(r["final_val_metric"]) / float(r["reference_val_metric"]) - 1 for r in rows]
    assert relative == pytest.approx(expected, rel=1e-5)  # one point an episode
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["proxy"]["paired"] is True and run["hyperparams"]["ent_coef"] == 0.01
    assert main(["train", "--env", "dp_gym/TinyTextFlat-v0", "--hyperparams", '{"ent_coeff": 0.01}',
                 "--out", str(tmp_path / "bad")]) == 2  # names the key, before anything runs


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train("dp_gym/TinyText-v0", "sac", 4, out=tmp_path, resume=tmp_path, env_overrides=SMALL, progress_bar=False)


def test_zoo_hyperparameter_files_parse_and_construct(tmp_path):
    env = dp_gym.make("dp_gym/TinyText-v0", **SMALL)
    files = sorted(Path("envs_configs/algos").glob("*.yaml"))
    assert {f.stem for f in files} >= {"sac", "td3", "ppo", "a2c", "tqc"}
    for path in files:
        table = yaml.safe_load(path.read_text())
        ids = {*dp_gym.list_envs(), *dp_gym.list_proxy_envs()}
        assert "default" in table and ids <= set(table), f"{path}: every registered id has an entry"
        for key, entry in table.items():
            assert key == "default" or key in ids, f"{path}: {key}"
            assert {"n_timesteps", "policy"} <= set(entry), f"{path}: zoo needs n_timesteps and policy"
        kwargs, zoo = load_hyperparams(path.stem, "dp_gym/TinyText-v0")
        model = algorithm(path.stem)(zoo["policy"], env, **kwargs)
        assert model.policy is not None


@pytest.mark.parametrize("algo", ["sac", "td3", "ppo", "a2c", "tqc"])
def test_a_zero_started_policy_takes_action_zero_and_still_explores(algo):
    env = dp_gym.make("dp_gym/TinyTextPaced-v0", **SMALL)
    kwargs, zoo = load_hyperparams(algo, "dp_gym/TinyTextPaced-v0")
    model = algorithm(algo)(zoo["policy"], env, seed=0, **kwargs)
    start_at_action_zero(model, std=0.2)
    observations = np.stack([env.observation_space.sample() for _ in range(8)])
    actions, _ = model.predict(observations, deterministic=True)
    np.testing.assert_allclose(actions, 0.0, atol=1e-6)
    if algo != "td3":  # TD3's exploration is its action noise, outside the policy
        sampled, _ = model.predict(observations, deterministic=False)
        assert 0.05 < float(np.std(sampled)) < 0.5
    with pytest.raises(ValueError, match="std"):
        start_at_action_zero(model, std=0.0)


def test_online_finetune_writes_model_and_privacy_report(tmp_path, monkeypatch):
    monkeypatch.setenv("DP_GYM_SECRET_KEY", "dp-gym-test-secret-key-0001")  # the utility check below is then fixed
    report = finetune_online("dp_gym/TinyText-v0", "vanilla", tmp_path / "vanilla", env_overrides=SMALL)
    assert report["privacy_valid"] and report["epsilon"] <= 3.0 and report["history"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "vanilla" / "model")
    assert model.config.n_layer == 3
    assert report["val_ppl"] < report["base_val_ppl"]

    learned = finetune_online("dp_gym/TinyText-v0", "sac", tmp_path / "sac", env_overrides=SMALL)
    assert (tmp_path / "sac" / "controller.zip").exists() and 0 < learned["updates"] <= 8
    assert learned["private_episodes"] == 1
    assert json.loads((tmp_path / "sac" / "privacy_report.json").read_text())["epsilon"] <= 3.0


def test_compare_writes_csv_json_png_one_row_per_controller_and_seed(tmp_path):
    overrides = json.dumps(SMALL)
    code = main(["compare", "--controllers", "vanilla", "adaptive_quantile", "--seeds", "2",
                 "--env-overrides", overrides, "--out", str(tmp_path)])
    assert code == 0
    rows = (tmp_path / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 2 and rows[0].startswith("controller,seed")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["privacy_valid"] is True and len(data["summary"]) == 2
    assert data["epsilon_scope"].startswith("end to end")  # default heuristics: the deployment is all there is
    episode = data["episodes"][0]["privacy"]
    assert episode["accounting"].startswith("rdp-filter@alpha=") and episode["epsilon"] == 3.0
    for png in ("ppl_vs_epsilon.png", "controls_over_episode.png", "performance_profiles.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| vanilla |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("env_id, task_kwargs, clip", [
    ("dp_gym/TinyTextFlatSchedule-v0", {"n_train": 64, "n_val": 8}, 0.1),
    ("dp_gym/TinyTextBudgetSchedule-v0", {"n_train": 64, "n_val": 8}, 0.1),
    ("dp_gym/TinyVisionSchedule-v0", {"dataset": "scenes", "n_train": 32, "n_val": 4}, 0.5)])
def test_the_shipped_pretrained_sac_deploys_once_and_carries_nothing(tmp_path, env_id, task_kwargs, clip):
    from agents.pretrained import available

    assert env_id in available()["sac"]
    small = json.dumps({"task_kwargs": task_kwargs, "max_updates": 8})
    code = main(["compare", "--env", env_id, "--controllers", "sac:pretrained",
                 f"schedule:clip={clip},clip_knots=2/1/0.5", "--seeds", "1", "--env-overrides", small,
                 "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    sac = next(e for e in data["episodes"] if e["controller"] == "sac")
    assert sac["privacy"]["private_episodes"] == 1 and sac["privacy"]["epsilon_scope"].startswith("end to end")
    # how many of the 8 updates it makes is the policy's choice (a pace below 1 spends the budget sooner)
    assert 1 <= sac["updates"] <= 8 and sac["failure"] is None and sac["privacy"]["epsilon"] <= 3.0


@pytest.mark.parametrize("where", ["proxies", "private"])
def test_tune_vanilla_grid_searches_the_clip_then_the_learning_rate(tmp_path, where):
    code = main(["tune-vanilla", "--clips", "0.1", "1.0", "--learning-rates", "0.0001", "0.005",
                 "--env-overrides", json.dumps(SMALL), "--out", str(tmp_path), *(["--private"] if where == "private" else [])])
    assert code == 0
    tuned = json.loads((tmp_path / "tune_vanilla.json").read_text())
    assert set(tuned["scores"]) == {"0.1", "1.0"} and tuned["best_clip"] in (0.1, 1.0)
    rates = {float(rate): score for rate, score in tuned["learning_rate_scores"].items()}
    assert set(rates) == {0.0001, 0.005}
    # each rate really ran under its own learning rate, and the best one is reported
    assert rates[0.0001] != rates[0.005] and tuned["best_learning_rate"] == min(rates, key=rates.get)
    assert tuned["privacy_valid"] is True
    if where == "proxies":  # the default: no private data touched
        assert tuned["tuned_on"] == "public proxies" and tuned["privacy"]["private_episodes"] == 0
        assert tuned["privacy"]["epsilon"] == 0.0
    else:  # every grid point a private run: 2 clips + 1 new rate (5e-3 reuses the clip search's run)
        assert "every grid run" in tuned["epsilon_scope"]
        assert tuned["privacy"]["private_episodes"] == 3 and 3.0 < tuned["privacy"]["epsilon"] < 9.0


def test_tune_learning_rate_reuses_the_clip_search_run_and_a_keyed_rerun_matches(monkeypatch):
    from agents.tuning import tune_learning_rate, tune_vanilla, tuning_privacy

    monkeypatch.setenv("DP_GYM_SECRET_KEY", "dp-gym-test-secret-key-0001")
    clips = tune_vanilla("dp_gym/TinyText-v0", [0.3], 0, SMALL, private=True)
    reused = tune_learning_rate("dp_gym/TinyText-v0", clips.best, [0.005], 0, SMALL,
                                episode_at_env_rate=clips.runs[clips.best], private=True)
    assert reused.runs[0.005] is clips.runs[0.3] and reused.episodes == []  # 5e-3 is the env's rate: not run again
    assert tuning_privacy(clips, reused).private_episodes == 1
    rerun = tune_learning_rate("dp_gym/TinyText-v0", clips.best, [0.005], 0, SMALL, private=True)
    assert rerun.scores[0.005] != clips.scores[0.3]  # the lr grid's noise stream differs from the clip grid's
    again = tune_learning_rate("dp_gym/TinyText-v0", clips.best, [0.005], 0, SMALL, private=True)
    assert again.scores == rerun.scores  # with the same secret key a grid point's run reproduces
    on_proxies = tune_vanilla("dp_gym/TinyText-v0", [0.3], 0, SMALL, episodes=2)
    assert len(on_proxies.runs[0.3]) == 2 and tuning_privacy(on_proxies).private_episodes == 0


def test_grid_points_that_do_not_fill_the_workers_are_split_and_give_the_same_runs(monkeypatch):
    from agents.tuning import tune_controller
    from dp_gym.utils.backends import LocalBackend, _contained

    class TwoWorkersHere(LocalBackend):
        """Two workers by count, run in this process (the split is the point, not the processes)."""

        def __init__(self):
            super().__init__(workers=2)
            self.keys = []

        def run(self, jobs, progress=None):
            self.keys += [job.key for job in jobs]
            return [_contained(job) for job in jobs]

    monkeypatch.setenv("DP_GYM_SECRET_KEY", "dp-gym-test-secret-key-0001")
    grid, backend = {"a": {"clip": 0.3}}, TwoWorkersHere()  # one point, two workers: split in two
    split = tune_controller("dp_gym/TinyText-v0", "vanilla", grid, 0, SMALL, episodes=3, backend=backend)
    assert backend.keys == ["tune-vanilla a [episodes 0-0]", "tune-vanilla a [episodes 1-2]"]
    whole = tune_controller("dp_gym/TinyText-v0", "vanilla", grid, 0, SMALL, episodes=3)
    assert [r.seed for r in split.runs["a"]] == [0, 1, 2]
    assert [r.final_val_ppl for r in split.runs["a"]] == [r.final_val_ppl for r in whole.runs["a"]]
    backend = TwoWorkersHere()
    tune_controller("dp_gym/TinyText-v0", "vanilla", {"a": {"clip": 0.3}, "b": {"clip": 0.1}}, 0, SMALL,
                    episodes=1, backend=backend)
    assert backend.keys == ["tune-vanilla a", "tune-vanilla b"]  # two points fill two workers: not split


def test_oracle_runs_say_so_in_every_file(tmp_path):
    overrides = json.dumps({**SMALL, "observation": "oracle"})
    assert main(["evaluate", "--policy", "vanilla", "--episodes", "1", "--env-overrides", overrides,
                 "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["privacy_valid"] is False
    assert "privacy_valid: false" in (tmp_path / "results.md").read_text()
    assert "False" in (tmp_path / "results.csv").read_text()
    assert main(["tune-vanilla", "--clips", "0.3", "--env-overrides", overrides, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "tune_vanilla.json").read_text())["privacy_valid"] is False


@pytest.mark.parametrize("arguments, message", [
    (["train", "--env", "dp_gym/Nope-v0"], "unknown environment id 'dp_gym/Nope-v0'; dp-gym's: dp_gym/GPT2LoRA-v0, dp_gym/LlamaLoRA-v0, dp_gym/TinyDigits-v0"),
    (["train", "--timesteps", "0"], "must be a positive integer, got 0"),
    (["train", "--actor-init", "zero", "--actor-init-std", "0"], "must be a finite number > 0, got 0"),
    (["train", "--actor-init", "baseline"], "invalid choice: 'baseline'"),
    (["evaluate", "--policy", "sac:/no/such/model.zip"], "policy file /no/such/model.zip does not exist"),
    (["compare", "--controllers", "unicorn"], "unknown controller 'unicorn'"),
    (["train", "--env", "dp_gym/TinyTextFlatProxy-v0"], "is the public-proxy id of dp_gym/TinyTextFlat-v0"),
    (["compare", "--controllers", "sac:pretrained"], "no pretrained sac controller for 'dp_gym/TinyText-v0'"),
    (["compare", "--controllers", "schedule:clip_knots=2/x"], "clip_knots='2/x' is not a number"),
    (["compare", "--controllers", "vanilla", "--env-overrides", "{not json"], "must be a JSON object"),
    (["audit"], "give exactly one of --model DIR"),
    (["audit", "--run", "/no/such/run"], "/no/such/run/privacy_report.json does not exist"),
    (["audit", "--model", "/no/such/model"], "model path '/no/such/model' is not a local folder"),
    (["audit", "--one-run", "--broken", "everything"], "invalid choice: 'everything'"),
])
def test_bad_cli_input_is_one_clear_line_and_nonzero_exit(arguments, message, capsys):
    try:  # in-process: argparse exits with 2, the commands return 2 (any other exception fails the test)
        code = main(arguments)
    except SystemExit as exit:
        code = exit.code
    assert code != 0
    stderr = capsys.readouterr().err
    error_lines = [line for line in stderr.strip().splitlines() if "error" in line]
    assert len(error_lines) == 1 and message in error_lines[0], stderr


def test_python_dash_m_dp_gym_is_the_command():
    process = subprocess.run([sys.executable, "-m", "dp_gym", "tune-vanilla", "--help"], capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == 0 and "usage: dp-gym tune-vanilla" in process.stdout
    assert "full fine-tuning run on the private data" in " ".join(process.stdout.split())


def test_audit_attacks_a_finetuned_run_and_compare_adds_the_columns(tmp_path):
    small = {**SMALL, "task_kwargs": {"n_train": 64, "n_val": 8, "n_canaries": 2, "canary_repeats": 2}}
    finetune_online("dp_gym/TinyText-v0", "vanilla", tmp_path / "run", env_overrides=small)
    assert main(["audit", "--run", str(tmp_path / "run"), "--candidates", "99"]) == 0
    report = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert report["canaries"] == 2 and report["exposure_cap"] == pytest.approx(math.log2(100))
    assert 0 <= report["mia_reference_auc"] <= 1 and report["mia_members"] > 0

    audited = {**SMALL, "sample_rate": 0.2, "count_noise": None, "loss_noise": None}
    code = main(["compare", "--controllers", "vanilla", "--seeds", "1", "--audit",
                 "--env-overrides", json.dumps(audited), "--out", str(tmp_path / "cmp")])
    assert code == 0
    summary = json.loads((tmp_path / "cmp" / "results.json").read_text())["summary"][0]
    for column in ("exposure_mean", "mia_loss_auc", "mia_reference_auc", "mia_reference_tpr_at_1pct_fpr",
                   "epsilon_lower_bound"):
        assert summary[column] is not None, column
    assert summary["epsilon_lower_bound"] <= summary["epsilon"]
    assert "audited epsilon lower bound" in (tmp_path / "cmp" / "results.md").read_text()
    assert "epsilon_lower_bound" in (tmp_path / "cmp" / "results.csv").read_text().splitlines()[0]


def test_one_run_audit_from_the_cli(tmp_path):
    overrides = {**SMALL, "max_updates": 20, "updates_per_step": 10, "count_noise": None, "loss_noise": None}
    assert main(["audit", "--one-run", "--canaries", "32", "--broken", "no_noise", "--env-overrides",
                 json.dumps(overrides), "--out", str(tmp_path / "audit.json")]) == 0
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["broken"] == "no_noise" and report["privacy_valid"] is False and report["canaries"] == 32


@pytest.mark.slow
def test_training_on_proxies_in_parallel_is_reproducible_with_a_key(tmp_path, monkeypatch):
    """What `make pretrained` relies on: with a (public, proxy-only) key and a seed, SAC trained on
    proxies in 2 processes is the same policy twice."""
    import torch

    monkeypatch.setenv("DP_GYM_SECRET_KEY", "a-public-key-for-proxy-episodes")
    hyperparams = {"learning_starts": 8, "batch_size": 8, "buffer_size": 200}
    proxy = {"train_sizes": [32], "n_val": 4, "max_updates": [8]}
    policies = []
    for run in ("a", "b"):
        path = train("dp_gym/TinyTextFlatSchedule-v0", "sac", 24, 3, tmp_path / run, progress_bar=False,
                     checkpoint_every=24, hyperparams=hyperparams, actor_init="zero", proxy=proxy, n_envs=2,
                     env_overrides={"updates_per_step": 2}, report=lambda line: None)
        policies.append(load_policy(f"sac:{path}").policy.state_dict())
    assert policies[0].keys() == policies[1].keys()
    for name, tensor in policies[0].items():
        assert torch.equal(tensor, policies[1][name]), name


def test_compare_reports_iqm_and_improvement_against_the_named_baseline(tmp_path):
    code = main(["compare", "--controllers", "vanilla", "decay", "--baseline", "decay", "--seeds", "2",
                 "--env-overrides", json.dumps(SMALL), "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {row["controller"]: row for row in data["summary"]}
    low, high = rows["vanilla"]["final_val_ppl_iqm_ci95"]
    assert low <= rows["vanilla"]["final_val_ppl_iqm"] <= high
    ppl = {e["seed"]: e["final_val_ppl"] for e in data["episodes"] if e["controller"] == "vanilla"}
    ref = [e["final_val_ppl"] for e in data["episodes"] if e["controller"] == "decay"]
    expected = sum((x < y) + 0.5 * (x == y) for x in ppl.values() for y in ref) / 4
    assert rows["vanilla"]["p_improvement"] == pytest.approx(expected) and rows["decay"]["p_improvement"] is None
    table = (tmp_path / "results.md").read_text()
    assert "P(better than decay)" in table and "updates to reach decay's ppl" in table
    assert main(["compare", "--controllers", "decay", "--seeds", "1", "--env-overrides", json.dumps(SMALL),
                 "--out", str(tmp_path / "one")]) == 0
    table = (tmp_path / "one" / "results.md").read_text()  # one run: no interval; no vanilla: no comparison
    assert "+- n/a" in table and "[n/a]" in table and "updates to reach" not in table and "P(better" not in table
    assert main(["compare", "--controllers", "decay", "--baseline", "vanilla", "--seeds", "1"]) == 2


def test_the_terminal_table_shows_settings_and_the_base_model_and_never_splits_a_header_word():
    from rich.console import Console

    from dp_gym.evaluation import summarize, terminal_table
    from dp_gym.evaluation.report import natural_width
    from dp_gym.evaluation.rollout import EpisodeResult
    from dp_gym.privacy import PrivacyReport

    def result(name, ppl):
        report = PrivacyReport(epsilon=3.0, delta=1e-5, epsilon_budget=3.0, epsilon_spent=2.9, accounting="rdp",
                               adaptive=False, updates=200)
        return EpisodeResult(name, 0, 1.0, ppl, 80.0, 200, 50, 1.0, report)

    rows = summarize([result("vanilla", 40.0), result("sac", 30.0)], "vanilla")
    console = Console(width=120, record=True)
    console.print(terminal_table(rows, "vanilla", {"vanilla": "clip 0.1, lr 0.0025"}))
    text = console.export_text()
    assert "base model before fine-tuning: val perplexity 80.00" in text
    assert "settings" in text and "clip 0.1" in text and "0.0025" in text
    assert "privacy valid: every row" in text and "time" not in text  # wall time stays in the results files
    for word in ("controller", "epsilon", "episodes", "vanilla's", "P(better"):
        assert word in text  # whole words (a header wraps between words only), and no column dropped
    assert natural_width(terminal_table(rows, "vanilla")) <= 200
    console = Console(width=120, record=True)
    console.print(terminal_table(summarize([result("decay", 30.0)], "vanilla")))
    assert "30.00 [n/a]" in console.export_text()  # text, not markup
