"""Controllers trained or tuned on public proxies, deployed once per seed on the private data.

The honest protocol (issue: controllers that learn and transfer). For every environment:

1. SAC is trained on public proxy instances (``ProxyEnv``: public corpora, epsilon 1 to 8) for
   ``--timesteps`` steps, starting at action 0 (on the recommended ids, proxy-tuned DP-SGD), or
   ``--sac-model`` is loaded (``pretrained``: the shipped controller, trained that way by
   ``make pretrained``); with ``--paired`` its proxy episodes are rewarded against their action-0
   twin (``InstanceDistribution.paired``); with ``--select N`` what is deployed as ``sac`` is the
   best of its checkpoints and action 0 on ``N`` held-out public proxy instances
   (``agents.selection``, ``dp-gym select``);
2. every baseline is tuned on the same proxies with as many proxy episodes as SAC used in all
   (``sac_proxy_episodes``: its learning episodes, their action-0 twins when paired, and the
   selection's episodes):
   ``vanilla`` (plain DP-SGD at the env's action-0 clip; the learning rate), ``decay`` (a linear clip
   schedule; its start and end factors), ``schedule`` (Optuna's TPE over a 3-knot piecewise-linear
   clip and noise schedule, one episode per trial), ``adaptive_quantile`` (Andrew et al.;
   untuned defaults);
3. each controller runs **once** per seed on the private environment, at each ``--epsilons``: that
   deployment is its only private episode, and its reported epsilon is end to end.

Aggregates (``dp_gym.evaluation.aggregate``): per (env, epsilon) cell, the IQM of each controller's
relative final perplexity against the best baseline of that cell (lower is better) with a 95%
stratified-bootstrap interval, the probability that SAC improves on it, and the updates SAC needs to
reach the best baseline's final perplexity. The composed epsilon of the old protocol (the same SAC
trained on the private data instead) is shown next to it. ``deployments.json`` holds every
deployment with its trajectory: the clip and noise each step chose, the epsilon and the share of
the budget spent so far, and the public validation perplexity.

``--set FIELD=VALUE`` gives every controller, tuned and deployed, the same config fields (for
example ``returned_model=best_public``: each episode returns its best iterate by a public selection
split; SAC is deployed with it and the baselines are tuned and deployed with it).

``--reuse RUN...`` takes an earlier run's deployment of the same controller (spec and env
overrides), env, epsilon and seed instead of deploying it again (every deployment is one private
episode, independent of the others; the first listed run's is taken); ``transfer.json`` names
each reused deployment's run under ``reused``.

Deployments run in ``--workers`` processes with one torch thread each, or with ``--backend ray``
as one Ray Tune trial each (the results do not depend on where: with a secret key the same rows,
without one each deployment draws its own secret noise).

    python benchmarks/controller_transfer.py [--envs dp_gym/TinyTextFlatSchedule-v0] [--epsilons 1 3 8]
        [--seeds 10] [--timesteps 1000] [--sac-model pretrained] [--paired] [--select 8 | --selected]
        [--workers 2 | --backend ray [--address auto]] [--tune-only | --tuned transfer.json | --sac-only]
        [--reuse RUN...] [--set returned_model=best_public]
        [--out runs/bench/transfer]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

import dp_gym
from agents.controllers import controller_prior, deploy, noise_stream
from agents.pretrained import pretrained_model
from agents.rl import private_training_privacy, train
from agents.selection import SELECTION_JSON, select_checkpoint, selected_spec
from agents.tuning import tune_controller, tune_schedule
from dp_gym.envs import InstanceDistribution
from dp_gym.evaluation import write_json
from dp_gym.evaluation.aggregate import probability_of_improvement, stratified_bootstrap
from dp_gym.evaluation.rollout import EpisodeResult, end_to_end
from dp_gym.privacy import PrivacyReport
from dp_gym.utils.backends import make_backend
from dp_gym.utils.quiet import quiet_libraries
from dp_gym.utils.threads import configure_threads

BASELINES = ("vanilla", "decay", "schedule", "adaptive_quantile")


def sac_proxy_episodes(learning: int, paired: bool, selection: dict | None) -> dict[str, int]:
    """Every proxy episode SAC's deployed policy cost: ``learning`` episodes, an action-0 twin for
    each when ``paired``, and a selection's (held-out instances x candidates, action 0 included).
    The baselines are tuned with ``total`` each, so no controller sees more proxy episodes than another."""
    twins = learning if paired else 0
    chosen_among = 0
    if selection:
        metrics = selection["metrics"]
        chosen_among = len(metrics) * len(next(iter(metrics.values())))
    return {"learning": learning, "twins": twins, "selection": chosen_among,
            "total": learning + twins + chosen_among}


def selection_that_chose(model: Path) -> dict | None:
    """The ``selection.json`` beside ``model`` if that selection chose this very file (an exported
    one, :func:`agents.selection.export_selected`): its episodes count as SAC's."""
    try:
        chosen = selected_spec(model.parent)
    except FileNotFoundError:  # no selection beside it
        return None
    if model_digest(chosen) != model_digest(f"sac:{model}"):
        return None
    return json.loads((model.parent / SELECTION_JSON).read_text())


def tune_baselines(env_id: str, episodes: int, proxy: InstanceDistribution, report, backend=None,
                   overrides: dict | None = None) -> dict:
    """Each tuned baseline's best grid point, with ``episodes`` proxy episodes per baseline, tuned and
    returned with the config ``overrides`` every controller of the run has (``--set``)."""
    overrides = dict(overrides or {})
    config = dp_gym.config_of(env_id, **overrides)
    clip = float(np.sqrt(config.clip_range[0] * config.clip_range[1]))  # the action-0 clip
    rates = {f"lr={rate:g}": rate for rate in (config.learning_rate / 2, config.learning_rate, config.learning_rate * 2)}
    per_point = max(1, episodes // 3)
    vanilla = tune_controller(env_id, "vanilla", {label: {"clip": clip} for label in rates}, 0, overrides, report,
                              proxy=proxy, episodes=per_point, backend=backend,
                              env_overrides={label: {"learning_rate": rate} for label, rate in rates.items()})
    decays = {"1.5->0.5": (1.5, 0.5), "2->0.5": (2.0, 0.5), "1->0.25": (1.0, 0.25)}
    decay = tune_controller(env_id, "decay", {label: {"clip": clip, "clip_start": a, "clip_end": b, "noise_start": 1.0,
                                                      "noise_end": 1.0} for label, (a, b) in decays.items()},
                            0, overrides, report, proxy=proxy, episodes=per_point, backend=backend)
    schedule = tune_schedule(env_id, episodes, 0, overrides, clip=clip, report=report, proxy=proxy)
    best_rate = rates[vanilla.best]
    start, end = decays[decay.best]
    return {"vanilla": ({"clip": clip}, {**overrides, "learning_rate": best_rate}),
            "decay": ({"clip": clip, "clip_start": start, "clip_end": end, "noise_start": 1.0, "noise_end": 1.0},
                      dict(overrides)),
            "schedule": (schedule.params[schedule.best], dict(overrides)),
            "adaptive_quantile": ({}, dict(overrides))}


def earlier_tuning(path: Path, env_id: str, episodes: int, overrides: dict | None = None) -> dict:
    """``env_id``'s tuned baselines from an earlier run's ``transfer.json``, if that run tuned them
    with ``episodes`` proxy episodes each (SAC's total here) on today's proxies, with the same
    ``--set`` overrides."""
    earlier = json.loads(path.read_text())
    if earlier.get("overrides", {}) != dict(overrides or {}):
        raise SystemExit(f"{path} tuned with --set {earlier.get('overrides', {})}, this run has {overrides or {}}: "
                         "tune again (drop --tuned)")
    if env_id not in earlier.get("tuned", {}):
        raise SystemExit(f"{path} has no tuned baselines for {env_id}")
    if earlier.get("episodes", {}).get(env_id) != episodes:
        raise SystemExit(f"{path} tuned {env_id} with {earlier.get('episodes', {}).get(env_id)} proxy episodes "
                         f"per baseline, SAC used {episodes}: tune again (drop --tuned)")
    if InstanceDistribution.from_dict(earlier.get("proxy")) != InstanceDistribution():
        raise SystemExit(f"{path} tuned on other proxies than today's default InstanceDistribution: tune again")
    return {name: (kwargs, overrides) for name, (kwargs, overrides) in earlier["tuned"][env_id].items()}


def heuristic_spec(name: str, kwargs: dict) -> str:
    """``name(**kwargs)`` as a controller spec, ``"schedule:clip=0.3,clip_knots=1.2/0.8/0.5"`` (exact floats)."""
    items = [f"{key}={'/'.join(repr(float(v)) for v in value) if isinstance(value, list) else repr(float(value))}"
             for key, value in kwargs.items()]
    return name + (":" + ",".join(items) if items else "")


def cell_specs(tuned: dict, sac_spec: str, overrides: dict | None = None) -> dict[str, tuple[str, dict]]:
    """Every controller of a cell as ``name -> (spec, env overrides)``; ``overrides``: the run's
    ``--set`` (the tuned baselines carry them already)."""
    specs = {name: (heuristic_spec(name, kwargs), config) for name, (kwargs, config) in tuned.items()}
    specs["sac"] = (sac_spec, dict(overrides or {}))
    return specs


def model_digest(spec: str) -> str | None:
    """The sha256 of a ``sac:PATH`` spec's model file (what identifies a trained controller, not
    its path: a path can be retrained); None for a spec without a file (``action0``, a heuristic)."""
    _, _, path = spec.partition(":")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else None


def earlier_specs(transfer: dict, env_id: str) -> dict[str, tuple[str, dict]]:
    """What an earlier run of this benchmark deployed on ``env_id`` (its ``transfer.json``), as
    :func:`cell_specs`; runs that predate the ``specs`` field are read from their tuning and
    arguments."""
    if env_id in transfer.get("specs", {}):
        return {name: (spec, overrides) for name, (spec, overrides) in transfer["specs"][env_id].items()}
    tuned = {name: (kwargs, overrides) for name, (kwargs, overrides) in transfer.get("tuned", {}).get(env_id, {}).items()}
    args = transfer.get("args", {})
    if env_id in transfer.get("selections", {}):
        sac_spec = transfer["selections"][env_id]["chosen"]
    elif args.get("sac_model") and args["sac_model"] != "pretrained" and not args.get("select"):
        sac_spec = f"sac:{args['sac_model']}"
    else:
        sac_spec = None  # trained in the run, or the package's pretrained one then: not identifiable
    specs = cell_specs(tuned, sac_spec, transfer.get("overrides"))
    return {name: value for name, value in specs.items() if value[0] is not None}


@dataclass
class ReuseSource:
    """An earlier run of this benchmark whose deployments a cell may take (``--reuse RUN[:names]``)."""

    run: Path
    transfer: dict
    deployments: list[dict]
    controllers: frozenset[str] | None = None  # None: any

    @classmethod
    def parse(cls, argument: str, out: Path) -> ReuseSource:
        """``RUN`` or ``RUN:name,name`` (take only those controllers from it)."""
        path, colon, names = argument.rpartition(":")
        if not colon or "/" in names:  # no restriction (the colon, if any, is the path's own)
            path, names = argument, ""
        run = Path(path)
        if run.resolve() == out.resolve():
            raise SystemExit(f"--reuse {run} is this run's own --out folder: its files are rewritten as it goes")
        for name in ("transfer.json", "deployments.json"):
            if not (run / name).exists():
                raise SystemExit(f"--reuse {run}: {run / name} does not exist (an output folder of this benchmark)")
        return cls(run, json.loads((run / "transfer.json").read_text()),
                   json.loads((run / "deployments.json").read_text())["deployments"],
                   frozenset(names.split(",")) if names else None)


def reusable_deployments(sources: list[ReuseSource], env_id: str, epsilon: float,
                         specs: dict[str, tuple[str, dict]]) -> dict[tuple[str, int], tuple[dict, str]]:
    """Deployments of earlier runs that this cell may take instead of deploying again: the same env,
    epsilon, seed, controller spec and env overrides (and, for a model, the same file: its sha256
    where the earlier run recorded it). Each deployment is one private episode on its own (its
    privacy report already end to end), independent of every other, so another run's deployment of
    the same controller is a draw from the same distribution.

    **No choosing among draws.** When two sources hold *different* deployments of one (controller,
    seed) the cell stops: taking the better-looking one would be cherry-picking. Restrict a source
    to some controllers with ``RUN:name,name``. Values: ``(deployment, run folder)``, keyed by
    ``(name, seed)``."""
    ours = {name: model_digest(spec) for name, (spec, _) in specs.items()}
    found: dict[tuple[str, int], list[tuple[dict, str]]] = {}
    for source in sources:
        theirs = earlier_specs(source.transfer, env_id)
        their_digest = source.transfer.get("model_sha256", {}).get(env_id)
        for deployment in source.deployments:
            name, seed = deployment["controller"], int(deployment["seed"])
            if (deployment["env"] == env_id and float(deployment["epsilon"]) == float(epsilon) and name in specs
                    and (source.controllers is None or name in source.controllers)
                    and theirs.get(name) == specs[name] and not deployment.get("error")
                    and (name != "sac" or their_digest is None or their_digest == ours[name])):
                found.setdefault((name, seed), []).append((deployment, str(source.run)))
    reused = {}
    for (name, seed), candidates in found.items():
        if any(deployment != candidates[0][0] for deployment, _ in candidates[1:]):
            raise SystemExit(f"{name}, seed {seed} at epsilon {epsilon:g}: {' and '.join(run for _, run in candidates)} "
                             "hold different deployments; take it from one (--reuse RUN:controllers)")
        reused[name, seed] = candidates[0]
    return reused


def deploy_cell(backend, env_id: str, epsilon: float, tuned: dict, sac_spec: str, seeds,
                reuse: list[ReuseSource] = (), overrides: dict | None = None) -> tuple[list, dict]:
    """Each controller once per seed on the private data at ``epsilon``, every deployment one job of
    ``backend``, or taken from an earlier run of ``reuse`` (:func:`reusable_deployments`); each
    controller was trained, tuned or selected on public proxies only, so what it carries into its
    deployment is nothing for a tuned heuristic and the model's ``run.json`` report for SAC
    (``sac_spec``: a model, or what a selection chose). Returns the results (in the order of the
    controllers, then seeds) and ``"name/seed=s" -> run folder`` for those reused."""
    both = cell_specs(tuned, sac_spec, overrides)
    reused = reusable_deployments(list(reuse), env_id, epsilon, both)
    specs = {name: spec for name, (spec, _) in both.items()}
    overrides_of = {name: config for name, (_, config) in both.items()}
    missing = {}  # the seeds each controller still needs -> the controllers that need them
    for name in specs:
        needed = tuple(seed for seed in seeds if (name, seed) not in reused)
        if needed:
            missing.setdefault(needed, []).append(name)
    # with a secret key, the stream names everything that decides the actions
    streams = {name: f"transfer/{name}:{json.dumps({**kwargs, **config}, sort_keys=True)}"
               for name, (kwargs, config) in tuned.items()}
    delta = dp_gym.config_of(env_id).delta
    priors = {name: PrivacyReport.nothing(delta, "tuned on public proxies") for name in tuned}
    if any("sac" in names for names in missing.values()):  # (reading the model only when it runs)
        streams["sac"] = noise_stream("transfer", sac_spec)
        priors["sac"] = controller_prior(sac_spec, delta, env_id)
    deployed = {}
    for needed, names in missing.items():
        for result in deploy(backend, env_id, {name: specs[name] for name in names}, needed, {"epsilon": epsilon},
                             overrides_of, streams):
            deployed[result.controller, result.seed] = result
    results = []
    for name in specs:
        for seed in seeds:
            if (name, seed) in reused:
                results.append(EpisodeResult.from_dict(
                    {k: v for k, v in reused[name, seed][0].items() if k not in ("env", "epsilon")}))
                continue
            result = deployed[name, seed]
            if result.error:
                raise SystemExit(f"{name}, seed {seed} raised {result.error}: the cell has no number")
            result.privacy = end_to_end(result.privacy, priors[name])
            results.append(result)
    return results, {f"{name}/seed={seed}": run for (name, seed), (_, run) in reused.items()}


def parse_overrides(items: list[str]) -> dict:
    """``["returned_model=best_public", ...]`` -> config overrides (values read as YAML; a number
    YAML reads as a string, ``1e-3``, as a number), each checked against
    :class:`dp_gym.config.EnvConfig` (a bad field or value stops with its name). ``epsilon`` and
    ``sample_rate`` are refused: a cell sets its epsilon, and the proxies draw both."""
    overrides = {}
    for item in items:
        field, equals, value = item.partition("=")
        if not equals or not field:
            raise SystemExit(f"--set {item!r}: write FIELD=VALUE")
        if field in ("epsilon", "sample_rate"):
            raise SystemExit(f"--set {field}: the cells set epsilon (--epsilons) and the proxies draw their own "
                             "epsilon and sample rate, so it would not reach every controller alike")
        overrides[field] = yaml.safe_load(value)
        if isinstance(overrides[field], str):
            try:
                overrides[field] = float(overrides[field])
            except ValueError:
                pass
    try:
        dp_gym.EnvConfig.from_dict(overrides)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"--set: {error}") from None
    return overrides


def aggregate(results, env_id: str, epsilon: float) -> list[dict]:
    """One row per controller of one cell."""
    by = {}
    for result in results:
        by.setdefault(result.controller, {})[result.seed] = result
    means = {name: np.mean([r.final_val_ppl for r in runs.values()]) for name, runs in by.items() if name in BASELINES}
    best = min(means, key=means.get)
    rows = []
    for name, runs in by.items():
        relative = np.array([runs[s].final_val_ppl / by[best][s].final_val_ppl - 1 for s in sorted(runs)])
        point, low, high = stratified_bootstrap({f"{env_id}@{epsilon}": relative})
        reach = [runs[s].updates_to_reach(by[best][s].final_val_ppl) for s in sorted(runs)]
        reached = [x for x in reach if x is not None]
        rows.append({"env": env_id, "epsilon": epsilon, "controller": name, "best_baseline": best,
                     "iqm_relative": point, "ci_low": low, "ci_high": high,
                     "mean_ppl": float(np.mean([r.final_val_ppl for r in runs.values()])),
                     "p_improvement": probability_of_improvement(
                         {"cell": np.array([r.final_val_ppl for r in runs.values()])},
                         {"cell": np.array([r.final_val_ppl for r in by[best].values()])}),
                     "updates_to_best_baseline": float(np.mean(reached)) if reached else None,
                     "reached": f"{len(reached)}/{len(reach)}",
                     "epsilon_end_to_end": max(r.privacy.epsilon for r in runs.values()),
                     "private_episodes": max(r.privacy.private_episodes for r in runs.values()),
                     "relative": relative.tolist()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["dp_gym/TinyTextFlatSchedule-v0"])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--timesteps", type=int, default=1000)
    parser.add_argument("--n-envs", type=int, default=2)
    parser.add_argument("--sac-model", default=None,
                        help="a trained SAC model.zip, or 'pretrained' (the shipped one); default: train it here")
    parser.add_argument("--workers", type=int, default=2, help="local backend: deployment processes, one thread each")
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="where the deployments run: local processes, or one Ray Tune trial each")
    parser.add_argument("--address", default=None, help="with --backend ray: a running cluster (auto, ray://...)")
    parser.add_argument("--resources", default=None, help='with --backend ray: one trial\'s resources, JSON')
    parser.add_argument("--out", default="runs/bench/transfer")
    parser.add_argument("--paired", action="store_true",
                        help="train SAC with the paired reward (each proxy episode against its action-0 twin)")
    parser.add_argument("--select", type=int, default=0, metavar="N",
                        help="deploy the best of SAC's checkpoints and action 0 on N held-out public proxy "
                             "instances (0: the final model)")
    parser.add_argument("--selected", action="store_true",
                        help="with --sac-model: deploy what its run's selection.json chose (`dp-gym select` ran)")
    parser.add_argument("--tuned", default=None,
                        help="an earlier run's transfer.json: deploy its tuned baselines instead of tuning again "
                             "(it must have tuned each env with as many proxy episodes as SAC used here)")
    parser.add_argument("--reuse", nargs="+", default=[], metavar="RUN[:NAMES]",
                        help="earlier output folders of this benchmark: take their deployments of the same "
                             "controller (spec and overrides), env, epsilon and seed instead of deploying again; "
                             "RUN:sac,vanilla takes only those controllers from RUN")
    parser.add_argument("--sac-only", action="store_true",
                        help="deploy SAC alone (no tuning, no table): a later run takes its deployments with --reuse")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE", dest="overrides",
                        help="config fields every controller is tuned and deployed with, e.g. "
                             "returned_model=best_public (values are read as YAML)")
    parser.add_argument("--tune-only", action="store_true",
                        help="tune the baselines, write transfer.json and stop (deploy later with --tuned)")
    args = parser.parse_args()
    if args.tune_only and (args.tuned or args.sac_only):
        parser.error("--tune-only tunes: drop --tuned and --sac-only")
    overrides = parse_overrides(args.overrides)
    quiet_libraries()
    configure_threads()
    out = Path(args.out)
    sources = [ReuseSource.parse(argument, out) for argument in args.reuse]  # read before anything is written
    proxy = InstanceDistribution()  # the baselines' tuning: final perplexity, no twin needed
    rows, tuned_by_env, episodes_by_env, sac_episodes_by_env, deployments, selections = [], {}, {}, {}, [], {}
    specs_by_env, digests, reused = {}, {}, {}  # what each cell deployed, and which came from --reuse runs
    sac_proxies = {}  # the proxies SAC trained on, per env (a loaded model's from its run.json)

    def write_transfer() -> None:
        write_json({"rows": rows, "tuned": tuned_by_env, "episodes": episodes_by_env,
                    "sac_proxy_episodes": sac_episodes_by_env, "selections": selections, "proxy": asdict(proxy),
                    "sac_proxy": sac_proxies, "specs": specs_by_env, "model_sha256": digests, "reused": reused,
                    "overrides": overrides, "args": vars(args)},
                   out / "transfer.json")

    for env_id in args.envs:
        if args.sac_model:
            model = pretrained_model("sac", env_id) if args.sac_model == "pretrained" else Path(args.sac_model)
            if not (model.parent / "run.json").exists():
                raise SystemExit(f"{model.parent / 'run.json'} does not exist: the benchmark needs to know how "
                                 "the model was trained (a `dp-gym train` output)")
            run = json.loads((model.parent / "run.json").read_text())
            trained_for, paired = run["timesteps"], bool((run.get("proxy") or {}).get("paired"))
            sac_proxies[env_id] = run.get("proxy")
            print(f"== {env_id}: SAC from {model} ({trained_for} steps on proxies{', paired' if paired else ''})")
            trained_with = {field: value for field, value in (run.get("env_overrides") or {}).items()
                            if field in overrides}
            if trained_with != overrides:  # the baselines are tuned with --set; this SAC was trained without
                print(f"== note: SAC was trained with {trained_with or 'none'} of --set {overrides}; it is deployed "
                      "with them, the baselines are tuned and deployed with them")
        else:
            print(f"== {env_id}: SAC on proxies for {args.timesteps} steps")
            sac_proxy = dataclasses.replace(proxy, paired=args.paired)
            sac_proxies[env_id] = asdict(sac_proxy)
            model = train(env_id, "sac", args.timesteps, 0, out / env_id.replace("/", "_") / "sac", progress_bar=False,
                          checkpoint_every=max(args.timesteps // 4, 1) if args.select else args.timesteps,
                          actor_init="zero", proxy=sac_proxy, n_envs=args.n_envs, env_overrides=overrides)
            trained_for, paired = args.timesteps, args.paired
        sac_spec = f"sac:{model}"
        if args.select:
            print(f"== choosing among {model.parent}'s checkpoints and action 0 on {args.select} held-out proxies")
            selection = select_checkpoint(env_id, model.parent, args.select, report=print, **overrides)
            sac_spec, selections[env_id] = selection.chosen, selection.to_dict()
        elif args.selected:
            selected_spec(model.parent)  # a clear line when dp-gym select has not run
            selections[env_id] = json.loads((model.parent / SELECTION_JSON).read_text())
            sac_spec = selections[env_id]["chosen"]
            print(f"== deploying as sac what {model.parent / SELECTION_JSON} chose: {sac_spec}")
        selection = selections.get(env_id) or selection_that_chose(model)  # (a shipped export's, say)
        used = sac_episodes_by_env[env_id] = sac_proxy_episodes(
            trained_for // dp_gym.make(env_id).spec.max_episode_steps, paired, selection)
        episodes = episodes_by_env[env_id] = used["total"]
        print(f"== SAC's proxy episodes: {used}")
        if args.sac_only:
            tuned = tuned_by_env[env_id] = {}
            print("== deploying SAC only (--sac-only): compare it with a later run's --reuse")
        elif args.tuned:
            tuned = tuned_by_env[env_id] = earlier_tuning(Path(args.tuned), env_id, episodes, overrides)
            print(f"== the baselines as tuned by {args.tuned} ({episodes} proxy episodes each)")
        else:
            print(f"== tuning the baselines on the same proxies ({episodes} episodes each)")
            tuned = tuned_by_env[env_id] = tune_baselines(
                env_id, episodes, proxy, print, make_backend(args.backend, out, args.address, args.resources,
                                                             workers=args.workers,
                                                             experiment=f"{env_id.replace('/', '_')}-tuning"),
                overrides)
        specs_by_env[env_id], digests[env_id] = cell_specs(tuned, sac_spec, overrides), model_digest(sac_spec)
        write_transfer()
        if args.tune_only:
            continue
        for epsilon in args.epsilons:
            print(f"== deploying on the private data at epsilon {epsilon:g}, {args.seeds} seeds")
            backend = make_backend(args.backend, out, args.address, args.resources, workers=args.workers,
                                   experiment=f"{env_id.replace('/', '_')}@{epsilon:g}")
            cell_name = f"{env_id}@{epsilon!r}"
            results, reused[cell_name] = deploy_cell(backend, env_id, epsilon, tuned, sac_spec,
                                                     range(1000, 1000 + args.seeds), sources, overrides)
            if reused[cell_name]:
                print(f"== reused {len(reused[cell_name])} deployments of earlier runs "
                      "(the same controller, env, epsilon and seed)")
            deployments += [{"env": env_id, "epsilon": epsilon, **result.to_dict()} for result in results]
            # every deployment's trajectory (the controls it chose, the budget it spent, public
            # validation perplexity after each step): what the policy does, for learning curves
            write_json({"deployments": deployments}, out / "deployments.json")
            if args.sac_only:
                write_transfer()
                continue
            cell = aggregate(results, env_id, epsilon)
            old = private_training_privacy(dp_gym.config_of(env_id, epsilon=epsilon), trained_for).epsilon
            for row in cell:
                row["old_protocol_epsilon"] = old if row["controller"] == "sac" else None
            rows += cell
            write_transfer()
    print("\n| env | epsilon | controller | IQM relative ppl vs best baseline [95% CI] | mean ppl | P(improvement) | "
          "updates to reach best baseline | epsilon end to end (private episodes) | old protocol epsilon |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        reach = "-" if r["updates_to_best_baseline"] is None else f"{r['updates_to_best_baseline']:.0f} ({r['reached']})"
        old = "-" if r["old_protocol_epsilon"] is None else f"{r['old_protocol_epsilon']:.1f}"
        print(f"| {r['env']} | {r['epsilon']:g} | {r['controller']} | {100 * r['iqm_relative']:+.1f}% "
              f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] | {r['mean_ppl']:.2f} | {r['p_improvement']:.2f} | "
              f"{reach} | {r['epsilon_end_to_end']:.3f} ({r['private_episodes']}) | {old} |")
    print(f"\n(best baseline per cell; tuned values per env: {json.dumps(tuned_by_env)})")


if __name__ == "__main__":
    main()
