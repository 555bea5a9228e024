"""The ``dp-gym`` command line: ``envs | algos | train | plot | evaluate | compare | tune-vanilla | finetune |
audit | demo``.

Every command validates its arguments and fails with one clear line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _overrides(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--env-overrides must be a JSON object: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--env-overrides must be a JSON object")
    return value


# ---------------------------------------------------------------------------------- commands
def cmd_envs(args) -> None:
    import dp_gym

    for env_id, description in dp_gym.list_envs().items():
        console.print(f"[bold]{env_id}[/]  {description}")
    console.print("\npublic proxies (public data only: train on these with RL libraries that take an id, e.g. RL Zoo):")
    for proxy, env_id in dp_gym.list_proxy_envs().items():
        console.print(f"[bold]{proxy}[/]  public proxies of {env_id}")


def cmd_algos(args) -> None:
    """The shipped RL Zoo hyper-parameter files (``-conf`` of ``python -m rl_zoo3.train``)."""
    from agents.rl import ALGOS_DIR

    files = {path.stem: path for path in sorted(ALGOS_DIR.glob("*.yaml"))}
    if args.path:
        if args.path not in files:
            raise ValueError(f"no hyper-parameter file for {args.path!r}; shipped: {', '.join(files)}")
        print(files[args.path])
        return
    for algo, path in files.items():
        console.print(f"[bold]{algo}[/]  {path}", soft_wrap=True)


def cmd_train(args) -> None:
    from agents.rl import train

    if args.seeds:
        return _train_seeds(args)
    if args.backend != "local":
        raise ValueError("--backend ray runs several training runs: give them with --seeds")
    out = Path(args.out)
    fresh = not out.exists()
    try:
        path = train(args.env, args.algo, args.timesteps, args.seed, args.out, resume=args.resume,
                     env_overrides=args.env_overrides, checkpoint_every=args.checkpoint_every,
                     progress_bar=not args.no_progress, actor_init=args.actor_init,
                     actor_init_std=args.actor_init_std, report=lambda line: console.print(line, markup=False),
                     private_training=args.private_training, proxy=args.proxy, n_envs=args.n_envs,
                     hyperparams=args.hyperparams)
    except BaseException:
        # a run that failed before its first checkpoint leaves nothing to resume: no folder behind
        if fresh and out.is_dir() and not any((out / "checkpoints").glob("step_*")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    console.print(f"model: {path}\nTensorBoard: tensorboard --logdir {out / 'tb'}")


def _train_seeds(args) -> None:
    """``train --seeds``: one training run per public seed, in ``OUT/seed_<s>``, each a job of the
    backend; a run that raises is reported and the others go on."""
    from dp_gym.evaluation import write_json
    from dp_gym.utils.backends import Job

    if args.resume:
        raise ValueError("--resume continues one run; with --seeds, run the same command again: each seed's run "
                         "resumes from its own newest checkpoint")
    out = Path(args.out)
    jobs = [Job(f"seed={seed}", "agents.rl:train_job",
                {"env_id": args.env, "algo": args.algo, "timesteps": args.timesteps, "seed": seed,
                 "out": str(out / f"seed_{seed}"), "env_overrides": args.env_overrides,
                 "checkpoint_every": args.checkpoint_every, "actor_init": args.actor_init,
                 "actor_init_std": args.actor_init_std, "private_training": args.private_training,
                 "proxy": args.proxy, "n_envs": args.n_envs, "hyperparams": args.hyperparams},
                tuple(args.gym_packages))
            for seed in args.seeds]
    with console.status("training") as status:
        outcomes = _backend(args, "train").run(jobs, progress=lambda text: status.update(f"training: {text}"))
    runs = {outcome.key: ({"model": outcome.value} if not outcome.failed else {"error": outcome.error})
            for outcome in outcomes}
    for key, run in runs.items():
        console.print(f"{key}: " + (f"model {run['model']}" if "model" in run else f"raised {run['error']}"),
                      soft_wrap=True, markup=False)
    write_json({"env_id": args.env, "algo": args.algo, "timesteps": args.timesteps, "runs": runs},
               out / "seeds.json")
    console.print(f"TensorBoard: tensorboard --logdir {out}\nlearning curves: dp-gym plot {out}/seed_*", markup=False)
    failed = [key for key, run in runs.items() if "error" in run]
    if failed:  # the other runs finished and are kept; the command still says that not all did
        raise ValueError(f"{len(failed)} of {len(runs)} training runs raised ({', '.join(failed)}); see {out / 'seeds.json'}")


#: canaries ``compare --audit`` inserts when the environment has none (exposure needs them)
AUDIT_CANARIES = {"n_canaries": 8, "canary_repeats": 4}


def _compare_and_report(env_id, specs: dict[str, Any], seeds, out, overrides, reference="vanilla",
                        extra: dict | None = None, audit: bool = False, priors: dict[str, Any] | None = None,
                        overrides_of: dict[str, dict] | None = None, streams: dict[str, str] | None = None,
                        settings: dict[str, str] | None = None, backend=None, spec_strings: dict[str, str] | None = None,
                        imports: list[str] | tuple[str, ...] = ()) -> list:
    """Run ``specs`` (name -> factory) on the environment, each with ``overrides`` plus its own
    ``overrides_of[name]`` (a tuned learning rate, say), and write the report. ``priors``: what each
    controller carries from training or tuning (see :func:`dp_gym.evaluation.rollout.end_to_end`);
    ``settings``: each controller's tuned values for the terminal table (default: its overrides).
    ``backend``: a Ray backend runs each deployment as a trial, from ``spec_strings`` (name -> spec;
    the factories do not travel); None or the local backend runs them here."""
    import dp_gym
    from dp_gym.evaluation import compare, summarize, terminal_table, write_report
    from dp_gym.evaluation.report import natural_width
    from dp_gym.evaluation.rollout import end_to_end

    if audit:
        config = dp_gym.config_of(env_id, **overrides)
        if config.task != "text":
            raise ValueError(f"--audit attacks text models; {env_id} has task {config.task!r}")
        if not config.task_kwargs.get("n_canaries"):
            overrides = {**overrides, "task_kwargs": {**config.task_kwargs, **AUDIT_CANARIES}}
    if backend is not None and backend.name != "local":
        from agents.controllers import deploy

        if audit:
            raise ValueError("--audit runs on --backend local only (its one-run audit trains beside the deployments)")
        with console.status("running episodes") as status:
            results = deploy(backend, env_id, spec_strings, seeds, overrides, overrides_of, streams, imports,
                             progress=lambda text: status.update(f"sweep: {text}"))
        for result in results:
            result.privacy = end_to_end(result.privacy, (priors or {}).get(result.controller))
    else:
        groups: dict[str, dict[str, Any]] = {}  # controllers that share their overrides share an environment
        for name, factory in specs.items():
            own = (overrides_of or {}).get(name, {})
            groups.setdefault(json.dumps(own, sort_keys=True), {})[name] = factory
        results = []
        with console.status("running episodes") as status:
            for key, group in groups.items():
                merged = {**overrides, **json.loads(key)}
                results += compare(group, lambda merged=merged: dp_gym.make(env_id, **merged), seeds,
                                   progress=lambda text: status.update(f"episode: {text}"), audit=audit,
                                   prior=priors, streams=streams)
    order = list(specs)
    results.sort(key=lambda r: order.index(r.controller))
    paths = write_report(results, out, reference=reference if reference in specs else None,
                         extra={"env_id": env_id, "env_overrides": overrides, "controller_overrides": overrides_of or {},
                                **(extra or {})})
    if settings is None:
        settings = {name: ", ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                                    for key, value in own.items())
                    for name, own in (overrides_of or {}).items()}
    table = terminal_table(summarize(results, reference), reference, settings)
    # a terminal wraps the headers to its width; a log file or pipe gets the table unwrapped
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=max(console.width, natural_width(table))).print(table)
    console.print("written: " + ", ".join(str(p) for p in paths.values()))
    return results


def _priors(env_id: str, overrides: dict, names_to_specs: dict[str, str]) -> dict[str, Any]:
    import dp_gym
    from agents.controllers import controller_prior

    delta = dp_gym.config_of(env_id, **overrides).delta
    return {name: controller_prior(spec, delta, env_id) for name, spec in names_to_specs.items()}


def cmd_plot(args) -> None:
    """Learning curves of training runs (their ``episodes.csv``), one colour per label."""
    import csv

    from dp_gym.evaluation.plots import plot_learning_curves

    runs: dict[str, list] = {}
    for folder in map(Path, args.runs):
        table = folder / "episodes.csv"
        if not table.exists():
            raise FileNotFoundError(f"{table} does not exist (is {folder} a `dp-gym train` output?)")
        with table.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not {"timesteps", "final_val_metric"} <= set(reader.fieldnames or ()):
                raise ValueError(f"{table} has no timesteps and final_val_metric columns")
            rows = [row for row in reader if row["final_val_metric"] not in ("", "nan", "inf")]
        rows.sort(key=lambda row: float(row["timesteps"]))
        run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
        label = (folder.name if args.label == "folder" else
                 f"{run.get('algo', '?')} on {run.get('env_id', '?')} ({run.get('training_data', '?')})")
        runs.setdefault(label, []).append(([float(r["timesteps"]) for r in rows],
                                           [float(r["final_val_metric"]) for r in rows]))
    path = plot_learning_curves(runs, Path(args.out), window=args.window)
    console.print(f"written: {path}")


def cmd_select(args) -> None:
    """Choose what to deploy from a training run: its checkpoints or action 0, on held-out public
    proxy instances (no private data); writes ``RUN/selection.json``."""
    from agents.selection import select_checkpoint

    run = Path(args.run) / "run.json"
    if not run.exists():
        raise FileNotFoundError(f"{run} does not exist: give the --out folder of a finished `dp-gym train` run")
    trained = json.loads(run.read_text())
    console.print(f"selecting among the checkpoints of {args.run} and action 0 on {args.instances} held-out public "
                  f"proxy instances of {trained['env_id']} (no private data, no privacy spent)")
    selection = select_checkpoint(trained["env_id"], args.run, args.instances, args.first_seed, report=console.print,
                                  **trained.get("env_overrides", {}))
    console.print(f"deploy: {selection.chosen}  (as `--controllers selected:{args.run}`; written: "
                  f"{Path(args.run) / 'selection.json'})")
    if args.export:
        from agents.selection import export_selected

        console.print(f"exported: {export_selected(args.run, args.export)} (with run.json and selection.json)")


def cmd_evaluate(args) -> None:
    from agents.controllers import controller_factory, noise_stream

    name = args.policy.split(":")[0]
    _compare_and_report(args.env, {name: controller_factory(args.policy, args.env)},
                        list(range(args.seed, args.seed + args.episodes)), args.out, args.env_overrides,
                        priors=_priors(args.env, args.env_overrides, {name: args.policy}),
                        streams={name: noise_stream("evaluate", args.policy, args.env)},
                        backend=_backend(args, "evaluate"), spec_strings={name: args.policy}, imports=args.gym_packages)


def cmd_compare(args) -> None:
    from agents.controllers import controller_factory, noise_stream

    specs, names = {}, {}
    for spec in args.controllers:
        name = spec.split(":")[0]
        name = name if name not in specs else spec  # two of a kind: full spec
        specs[name], names[name] = controller_factory(spec, args.env), spec
    if args.baseline is not None and args.baseline not in specs:
        raise ValueError(f"--baseline {args.baseline!r} is not one of the controllers compared: {', '.join(specs)}")
    _compare_and_report(args.env, specs, list(range(args.seeds)), args.out, args.env_overrides, audit=args.audit,
                        reference=args.baseline or "vanilla",
                        priors=_priors(args.env, args.env_overrides, names),
                        streams={name: noise_stream("compare", spec, args.env) for name, spec in names.items()},
                        backend=_backend(args, "compare"), spec_strings=names, imports=args.gym_packages)


def cmd_tune_vanilla(args) -> None:
    from agents.tuning import tune_learning_rate, tune_vanilla, tuning_privacy
    from dp_gym.envs import InstanceDistribution
    from dp_gym.evaluation import write_json

    proxy = None if args.private else InstanceDistribution.from_dict(args.proxy)
    where = dict(private=args.private, proxy=proxy, episodes=args.episodes)
    clips = tune_vanilla(args.env, args.clips, args.seed, args.env_overrides, report=console.print,
                         backend=_backend(args, "tune-clip"), **where)
    console.print(f"best clip: {clips.best:g}")
    tunings = [clips]
    result: dict = {"env_id": args.env, "env_overrides": args.env_overrides, "tuned_on": "private data" if args.private
                    else "public proxies", "proxy": None if proxy is None else proxy.to_dict(),
                    "episodes_per_point": args.episodes, "best_clip": clips.best, "scores": clips.scores}
    if args.learning_rates:
        rates = tune_learning_rate(args.env, clips.best, args.learning_rates, args.seed, args.env_overrides,
                                   report=console.print, episode_at_env_rate=clips.runs[clips.best],
                                   backend=_backend(args, "tune-learning-rate"), **where)
        tunings.append(rates)
        console.print(f"best learning rate at clip {clips.best:g}: {rates.best:g}")
        result.update(best_learning_rate=rates.best, learning_rate_scores=rates.scores)
    privacy = tuning_privacy(*tunings)
    console.print(f"the tuning ran {privacy.private_episodes} private run(s): composed epsilon {privacy.epsilon:.3f} "
                  f"at delta {privacy.delta:g} ({privacy.accounting})")
    result.update(privacy_valid=privacy.privacy_valid, epsilon_scope=privacy.epsilon_scope,
                  privacy=privacy.to_dict(history=False))
    if args.out:
        write_json(result, Path(args.out) / "tune_vanilla.json")


def cmd_finetune(args) -> None:
    from agents.online import finetune_online

    env_id = args.env
    overrides = dict(args.env_overrides)
    if args.config:
        from dp_gym.envs.registration import register_config

        env_id = register_config(args.config, force=True)
    report = finetune_online(env_id, args.controller, args.out, args.seed, overrides)
    console.print(f"fine-tuned with {args.controller}: val ppl {report['base_val_ppl']:.2f} -> {report['val_ppl']:.2f}, "
                  f"epsilon {report['epsilon']:.3f} / {report['epsilon_budget']:g} (delta {report['delta']:g}, "
                  f"{report['accounting']}), privacy_valid={report['privacy_valid']}")
    console.print(f"model: {Path(args.out) / 'model'}  report: {Path(args.out) / 'privacy_report.json'}")


def cmd_audit(args) -> None:
    """Attack a fine-tuned model (``--model``/``--run``), or audit epsilon in one run (``--one-run``)."""
    import dp_gym
    from agents.controllers import controller_factory

    out = Path(args.out) if args.out else None
    if args.one_run:
        from dp_gym.evaluation import one_run_audit

        config = dp_gym.config_of(args.env, **args.env_overrides)
        policy = None if args.controller == "vanilla" else controller_factory(args.controller, args.env)
        with console.status(f"one-run audit of {args.env} ({args.canaries} canaries)"):
            result = one_run_audit(config, policy, n_canaries=args.canaries, seed=args.seed, broken=args.broken)
        report = result.to_dict() | {"env_id": args.env, "controller": args.controller}
        verdict = ("FLAGGED: the audit contradicts the reported epsilon" if result.flagged
                   else "consistent with the reported epsilon")
        console.print(f"audited epsilon lower bound {result.epsilon_lower_bound:.3f} (confidence {result.confidence:g}; "
                      f"{result.correct}/{result.guesses} correct guesses on {result.canaries} canaries) vs reported "
                      f"{result.epsilon_reported:.3f}: {verdict}; privacy_valid={result.privacy_valid}")
    else:
        from transformers import AutoModelForCausalLM

        from dp_gym.evaluation import privacy_attacks
        from dp_gym.models.local import load_local
        from dp_gym.tasks import create_task

        if bool(args.model) == bool(args.run):
            raise ValueError("give exactly one of --model DIR (with --env) or --run DIR (a `dp-gym finetune` output), "
                             "or --one-run")
        env_id, overrides, model_dir = args.env, args.env_overrides, args.model
        if args.run:
            run = Path(args.run)
            if not (run / "privacy_report.json").exists():
                raise FileNotFoundError(f"{run / 'privacy_report.json'} does not exist (is {run} a `dp-gym finetune` output?)")
            saved = json.loads((run / "privacy_report.json").read_text())
            env_id, overrides, model_dir = saved["env_id"], saved.get("env_overrides", {}), run / "model"
            if "redacted" in json.dumps(overrides.get("task_kwargs", {})):
                raise ValueError(f"{run} was fine-tuned on records of your own, which no results file holds; attack it "
                                 "with --model DIR --env ... --env-overrides giving the records again")
            out = out or run / "audit.json"
        config = dp_gym.config_of(env_id, **overrides)
        task = create_task(config.task, **config.task_arguments())
        model = load_local(AutoModelForCausalLM, model_dir)
        with console.status("attacking the model"):
            report = privacy_attacks(model, task, n_candidates=args.candidates, seed=args.seed)
        report = {"env_id": env_id, "model": str(model_dir), **report}
        exposure = (f"exposure {report['exposure_mean']:.2f} bits mean, {report['exposure_max']:.2f} max "
                    f"(cap {report['exposure_cap']:.2f}); " if "exposure_mean" in report else "no canaries; ")
        console.print(f"{exposure}MIA loss AUC {report['mia_loss_auc']:.3f}, reference AUC {report['mia_reference_auc']:.3f}, "
                      f"reference TPR@1%FPR {report['mia_reference_tpr_at_1pct_fpr']:.3f}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        console.print(f"written: {out}")


DEMO_ENV = "dp_gym/TinyTextBudgetSchedule-v0"


def cmd_demo(args) -> None:
    """The main job, the honest protocol: tune the baselines and train (or load the shipped) SAC on
    public proxies, then deploy each controller once per seed on the private environment."""
    from agents.controllers import controller_factory, controller_prior, noise_stream
    from agents.heuristics import make_controller
    from agents.pretrained import pretrained_model
    from agents.rl import train, training_privacy_of
    from agents.tuning import tune_learning_rate, tune_schedule, tune_vanilla, tuning_privacy
    from dp_gym.envs import InstanceDistribution

    out = Path(args.out)
    proxy = InstanceDistribution()
    console.rule(f"[bold]dp-gym demo[/]: {DEMO_ENV}, epsilon 3, delta 1e-5")
    console.print(f"1/3 tuning the baselines on public proxies, no private data: plain DP-SGD (clip, then learning "
                  f"rate; {args.episodes} episodes per grid point), then a clip/noise schedule ({args.trials} Optuna "
                  "trials)")
    clips = tune_vanilla(DEMO_ENV, args.clips, 0, {}, report=console.print, proxy=proxy, episodes=args.episodes)
    rates = tune_learning_rate(DEMO_ENV, clips.best, args.learning_rates, 0, {}, report=console.print,
                               episode_at_env_rate=clips.runs[clips.best], proxy=proxy, episodes=args.episodes)
    try:
        schedule = tune_schedule(DEMO_ENV, args.trials, 0, {}, report=console.print, proxy=proxy,
                                 episodes=args.episodes)
    except ImportError as error:  # optuna is the `tune` extra
        schedule = None
        console.print(f"   skipping the schedule baseline: {error}")
    schedule_params = schedule.params[schedule.best] if schedule else None
    schedule_spec = "none" if schedule is None else "schedule:" + ",".join(
        f"{key}={'/'.join(f'{v:.3g}' for v in value) if isinstance(value, list) else f'{value:.3g}'}"
        for key, value in schedule_params.items())
    console.print(f"   tuned: vanilla clip {clips.best:g}, learning rate {rates.best:g}; {schedule_spec}")
    if args.train_sac:
        console.print(f"2/3 training SAC on public proxies for {args.timesteps} steps ({args.n_envs} environments)")
        shutil.rmtree(out / "sac", ignore_errors=True)  # the demo's own folder: a rerun trains from nothing
        model = train(DEMO_ENV, "sac", args.timesteps, args.seed, out / "sac", progress_bar=not args.no_progress,
                      checkpoint_every=max(args.timesteps // 4, 1), proxy=proxy, n_envs=args.n_envs,
                      actor_init="zero", report=lambda line: console.print(line, markup=False))
    else:
        model = pretrained_model("sac", DEMO_ENV)
        console.print(f"2/3 loading the shipped SAC (trained on public proxies only by `make pretrained`; "
                      f"--train-sac trains one here): {model}")
    console.print(f"3/3 deploying each controller once per seed on the private data ({args.seeds} seeds)")
    specs = {"vanilla": controller_factory(f"vanilla:clip={clips.best}"),
             "adaptive_quantile": controller_factory("adaptive_quantile"),
             "schedule": lambda env: make_controller("schedule", env, **schedule_params),
             "sac": controller_factory(f"sac:{model}")}
    priors = {"vanilla": tuning_privacy(clips, rates), "adaptive_quantile": controller_prior("adaptive_quantile", 1e-5),
              "schedule": tuning_privacy(schedule) if schedule else None, "sac": training_privacy_of(model)}
    # with a secret key, the stream names everything that decides a controller's actions
    streams = {"vanilla": f"demo/vanilla:clip={clips.best!r},lr={rates.best!r}",
               "adaptive_quantile": "demo/adaptive_quantile",
               "schedule": f"demo/schedule:{json.dumps(schedule_params, sort_keys=True)}",
               "sac": noise_stream("demo", f"sac:{model}")}
    if schedule is None:
        for table in (specs, priors, streams):
            table.pop("schedule")
    settings = {"vanilla": f"clip {clips.best:g}, lr {rates.best:g}", "adaptive_quantile": "untuned",
                "schedule": schedule_spec.removeprefix("schedule:"),
                "sac": "trained here on proxies" if args.train_sac else "sac:pretrained (proxies only)"}
    _compare_and_report(DEMO_ENV, specs, list(range(100, 100 + args.seeds)), out, {}, priors=priors,
                        overrides_of={"vanilla": {"learning_rate": rates.best}}, streams=streams, settings=settings,
                        extra={"vanilla_clip": clips.best, "vanilla_learning_rate": rates.best,
                               "schedule": schedule_params,
                               "tuning_scores": {"clip": clips.scores, "learning_rate": rates.scores,
                                                 "schedule": schedule.scores if schedule else None},
                               "proxy": proxy.to_dict(), "sac_model": str(model)})
    console.print("every deployment above is the only private episode of its controller (private episodes: 1); "
                  "its epsilon is end to end")
    if args.train_sac:
        console.print(f"TensorBoard: tensorboard --logdir {out / 'sac' / 'tb'}")
    console.print(f"plots and tables in {out}/")


def _backend(args, experiment: str):
    """The sweep backend of ``--backend/--address/--resources`` (see :mod:`dp_gym.utils.backends`)."""
    from dp_gym.utils.backends import make_backend

    return make_backend(args.backend, args.out, address=args.address, resources=args.resources,
                        experiment=experiment, verbose=getattr(args, "verbose", False))


# ---------------------------------------------------------------------------------- parser
def _device(text: str) -> str:
    from dp_gym.utils.devices import check_device

    try:
        return check_device(text, "--device")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="dp-gym", description="DP fine-tuning of language models as an RL environment",
                                     formatter_class=formatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="show the libraries' warnings and loading bars")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str):
        return commands.add_parser(name, help=help, description=help, formatter_class=formatter)

    command("envs", "list dp-gym's registered environment ids (and their public-proxy ids)")
    algos = command("algos", "list the shipped RL Zoo hyper-parameter files, or print one's path")
    algos.add_argument("--path", metavar="ALGO", default=None,
                       help="print only this algorithm's file path (for rl_zoo3's -conf)")

    def common(parser, out, env=True):
        if env:
            parser.add_argument("--env", default="dp_gym/TinyText-v0",
                                help="an environment: a registered id (yours too, with --gym-packages), "
                                     "'module:EnvId-v0', or a YAML path")
            parser.add_argument("--gym-packages", nargs="*", default=[], metavar="MODULE",
                                help="modules to import first, e.g. the one that registers your environment (as RL Zoo)")
            parser.add_argument("--env-overrides", type=_overrides, default={},
                                help='JSON object of config overrides, e.g. \'{"epsilon": 8}\'')
            parser.add_argument("--device", default=None, type=_device,
                                help="auto (CUDA when available), cpu, cuda or cuda:N (default: the config's, auto)")
            parser.add_argument("--model-path", default=None, metavar="FOLDER",
                                help="a local checkpoint folder for the presets that read $DP_GYM_MODEL_PATH "
                                     "(dp_gym/GPT2LoRA-v0, dp_gym/LlamaLoRA-v0); sets it for this run and its workers")
        parser.add_argument("--seed", type=int, default=0, help="public seed (the DP noise stays secret)")
        parser.add_argument("--threads", type=_positive_int, default=None,
                            help="torch threads (default: $DP_GYM_THREADS, else the cores available)")
        parser.add_argument("--out", default=out, help="output folder" if out else "output file or folder (none: print only)")

    def sweep_options(parser, unit: str):
        parser.add_argument("--backend", choices=["local", "ray"], default="local",
                            help=f"where the {unit} run: here, one after another, or as Ray Tune trials (the `ray` "
                                 "extra; Tune's state in OUT/ray, so a re-run with the same --out resumes)")
        parser.add_argument("--address", default=None,
                            help="with --backend ray: a running cluster, 'auto' or 'ray://HOST:10001' (default: "
                                 "start Ray on this machine)")
        parser.add_argument("--resources", default=None,
                            help='with --backend ray: one trial\'s resources, JSON, e.g. \'{"CPU": 1, "GPU": 0.25}\' '
                                 '(default: {"CPU": 1})')

    train = command("train", "train an RL controller on public proxies of the environment (or, with "
                    "--private-training, on its private data, whose composed epsilon it then carries)")
    common(train, "runs/train")
    train.add_argument("--private-training", action="store_true",
                       help="train on the private data: every training episode's epsilon is reported and carried")
    train.add_argument("--proxy", type=_overrides, default={},
                       help="JSON of the proxy instance distribution, e.g. '{\"epsilon\": [1, 8]}' (see ProxyEnv)")
    train.add_argument("--hyperparams", type=_overrides, default={},
                       help='JSON of algorithm arguments over the shipped RL Zoo file, e.g. \'{"ent_coef": 0.005}\'')
    train.add_argument("--n-envs", type=_positive_int, default=1,
                       help="environments in parallel processes (one torch thread each)")
    train.add_argument("--algo", default="sac", choices=["sac", "td3", "ppo", "a2c", "tqc"], help="SB3 algorithm")
    train.add_argument("--timesteps", type=_positive_int, default=500, help="environment steps to train for")
    train.add_argument("--resume", default=None, help="a previous --out folder to continue from (its newest readable checkpoint)")
    train.add_argument("--checkpoint-every", type=_positive_int, default=100, help="steps between atomic checkpoints")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--actor-init", choices=["default", "zero"], default="default",
                       help="zero: the untrained policy takes action 0 (the baseline on a paced env)")
    train.add_argument("--actor-init-std", type=_positive_float, default=0.1,
                       help="initial exploration std with --actor-init zero")
    train.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                       help="several runs, one per public seed, in OUT/seed_<SEED> (instead of --seed)")
    sweep_options(train, "training runs of --seeds")

    plot = command("plot", "learning curves of training runs (final validation perplexity of each episode)")
    plot.add_argument("runs", nargs="+", help="`dp-gym train` output folders")
    plot.add_argument("--out", default="learning_curves.png", help="the PNG to write")
    plot.add_argument("--window", type=_positive_int, default=5, help="episodes in the moving mean")
    plot.add_argument("--label", choices=["run", "folder"], default="run",
                      help="run: one curve (mean and 95%% interval) per algorithm, env and training data; folder: one "
                           "per folder")

    select = command("select", "choose what to deploy from a training run: its checkpoints or action 0, compared "
                     "on held-out public proxy instances (no private data, no privacy spent)")
    select.add_argument("run", help="a finished `dp-gym train --out` folder")
    select.add_argument("--instances", type=_positive_int, default=8, help="held-out public proxy instances")
    select.add_argument("--first-seed", type=int, default=100, help="public seed of the first instance")
    select.add_argument("--export", default=None, metavar="DIR",
                        help="copy the chosen checkpoint, run.json and selection.json into DIR (a shippable "
                             "controller; refused when action 0 was chosen)")
    select.add_argument("--threads", type=_positive_int, default=None,
                        help="torch threads (default: $DP_GYM_THREADS, else the cores available)")

    evaluate = command("evaluate", "evaluate one controller")
    common(evaluate, "runs/evaluate")
    evaluate.add_argument("--policy", required=True, help="a heuristic name, 'module:Factory', ALGO:PATH or ALGO:pretrained")
    evaluate.add_argument("--episodes", type=_positive_int, default=3, help="episodes, seeds --seed, --seed + 1, ...")
    sweep_options(evaluate, "episodes")

    comparison = command("compare", "compare controllers on the same budget")
    common(comparison, "runs/compare")
    comparison.add_argument("--controllers", nargs="+", required=True,
                            help="heuristic names (name:key=value,...), 'module:Factory', ALGO:PATH or"
                                 " ALGO:pretrained (shipped for the env)")
    comparison.add_argument("--seeds", type=_positive_int, default=5, help="episodes per controller, seeds 0..N-1")
    comparison.add_argument("--baseline", default=None,
                            help="the controller every row is compared with (probability of improvement, updates "
                                 "to reach its perplexity), a name as it appears in the table; default: vanilla when "
                                 "it runs")
    comparison.add_argument("--audit", action="store_true",
                            help="attack every final model and audit each controller's epsilon in one run")
    sweep_options(comparison, "episodes (one per controller and seed)")

    tune = command("tune-vanilla", "grid-search the DP-SGD clip (and learning rate) on public proxies (or, with "
                   "--private, with every grid point a full fine-tuning run on the private data, scored on public "
                   "validation data: the composed epsilon of all of them is reported)")
    common(tune, None)
    tune.add_argument("--private", action="store_true", help="tune on the private data (each run spends the budget)")
    tune.add_argument("--proxy", type=_overrides, default={}, help="JSON of the proxy instance distribution")
    tune.add_argument("--episodes", type=_positive_int, default=1, help="episodes per grid point")
    tune.add_argument("--clips", type=_positive_float, nargs="+", default=[0.1, 0.3, 1.0], help="clip grid")
    tune.add_argument("--learning-rates", type=_positive_float, nargs="+", default=None,
                      help="then grid-search the learning rate at the best clip (a config override)")
    sweep_options(tune, "grid points")

    finetune = command("finetune", "online mode: fine-tune once with a controller (exactly one private episode)")
    common(finetune, "runs/finetune")
    finetune.add_argument("--config", default=None, help="an environment YAML (instead of --env)")
    finetune.add_argument("--controller", default="sac", help="sac, td3 or tqc (learn online) or a heuristic name")

    audit = command("audit", "privacy attacks on a fine-tuned model, or a one-run epsilon audit")
    common(audit, out=None)
    audit.add_argument("--model", default=None, help="a saved model folder (attacks; the private data of --env)")
    audit.add_argument("--run", default=None, help="a `dp-gym finetune` output folder (attacks)")
    audit.add_argument("--candidates", type=_positive_int, default=999, help="secrets sampled per canary")
    audit.add_argument("--one-run", action="store_true", help="audit epsilon in one training run instead")
    audit.add_argument("--controller", default="vanilla", help="with --one-run: the controller under audit")
    audit.add_argument("--canaries", type=_positive_int, default=256, help="with --one-run: audit canaries")
    audit.add_argument("--broken", default=None, choices=["no_noise"],
                       help="with --one-run: a deliberately broken configuration (negative control)")

    demo = command("demo", "the main job on the offline default: tune and train on public proxies, deploy once on "
                   "the private data")
    common(demo, "runs/demo", env=False)
    demo.add_argument("--train-sac", action="store_true", help="train SAC here instead of loading the shipped one")
    demo.add_argument("--timesteps", type=_positive_int, default=1000, help="with --train-sac: SAC training steps")
    demo.add_argument("--n-envs", type=_positive_int, default=2, help="proxy environments in parallel for SAC")
    demo.add_argument("--seeds", type=_positive_int, default=2, help="private deployments per controller")
    demo.add_argument("--clips", type=_positive_float, nargs="+", default=[0.05, 0.2], help="vanilla clip grid")
    demo.add_argument("--learning-rates", type=_positive_float, nargs="+", default=[0.00125, 0.0025, 0.005],
                      help="vanilla learning-rate grid (at the best clip)")
    demo.add_argument("--trials", type=_positive_int, default=6,
                      help="Optuna trials of the schedule baseline (each --episodes proxy episodes)")
    demo.add_argument("--episodes", type=_positive_int, default=2, help="proxy episodes per grid point")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


COMMANDS = {"envs": cmd_envs, "algos": cmd_algos, "plot": cmd_plot, "train": cmd_train, "select": cmd_select, "evaluate": cmd_evaluate, "compare": cmd_compare,
            "tune-vanilla": cmd_tune_vanilla, "finetune": cmd_finetune, "audit": cmd_audit, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from dp_gym.utils.quiet import quiet_libraries
        from dp_gym.utils.threads import configure_threads

        if not args.verbose:
            quiet_libraries()
        configure_threads(getattr(args, "threads", None))
        if getattr(args, "device", None):
            args.env_overrides = {**args.env_overrides, "device": args.device}
        if getattr(args, "model_path", None):
            from dp_gym.models.local import local_model_folder
            from dp_gym.models.spec import MODEL_PATH_VARIABLE

            os.environ[MODEL_PATH_VARIABLE] = str(local_model_folder(args.model_path).resolve())
        if getattr(args, "env", None) is not None:
            import dp_gym

            dp_gym.import_gym_packages(args.gym_packages)
            args.env = dp_gym.resolve_env_id(args.env)
        COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"dp-gym {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
