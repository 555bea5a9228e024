r"""What to deploy: a training run's checkpoints and the env's action 0, compared on held-out public
proxy instances.

A controller trained on proxies is worth deploying only if it beats the env's action 0 (on the
recommended ids, proxy-tuned DP-SGD) on proxies it was not trained on; the checkpoints of one run
can range from 21% better to 33% worse than action 0 (docs/BENCHMARKS.md, session 12). :func:`proxy_check` runs every
candidate and action 0 on the same public proxy instances and :func:`select_controller` keeps the
candidate with the lowest score

.. math:: s(c) = \frac{1}{n} \sum_{i=1}^{n} \log \frac{m_i(c)}{m_i(\text{action 0})}

(the log of the geometric-mean ratio of the final public-validation metric, lower is better;
action 0 scores 0 and wins ties). Every episode runs on a public proxy (``ProxyEnv``) whose data
comes from *held-out data seeds* (other draws of the same public corpora, which the training
distribution never uses; a templated corpus can repeat a record), so the choice
touches no private data and spends no privacy: the chosen controller carries exactly what its
training carried.

**Common random numbers.** With a secret key every candidate meets, on instance ``i``, the same
Poisson batches and the same noise draws (one noise stream for all), so the comparison is of
controllers, not of luck. Without one (neither given nor in ``$DP_GYM_SECRET_KEY``),
:func:`select_controller` draws a fresh key for the call (kept in memory, never written): the
proxies are public, so sharing noise between their episodes releases nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.checkpointing import checkpoints

#: the spec of the env's action 0 as a controller
ACTION_ZERO = "action0"
#: public data seeds of the selection's proxy instances: none of InstanceDistribution's defaults
HELD_OUT_DATA_SEEDS = (101, 102, 103)
#: the file a selection writes into the training run's folder
SELECTION_JSON = "selection.json"


def proxy_check(env_id: str, specs: Sequence[str], seeds: Sequence[int], distribution=None, secret_key=None,
                **overrides: Any) -> dict[str, np.ndarray]:
    """``{"action0": metrics, spec: metrics, ...}``: one final public-validation metric per proxy
    instance (public seed), every controller on the same instances (and, with a key, the same noise).

    Args:
        env_id: the deployment env whose proxies to run.
        specs: controller specs, as for ``dp-gym compare``.
        seeds: the public seeds that draw the instances.
        distribution: the instance distribution (default: ``InstanceDistribution()``).
        secret_key: makes the episodes reproducible and shared between controllers.
        **overrides: env config overrides.
    """
    import dp_gym
    from agents.controllers import controller_factory
    from dp_gym.envs import InstanceDistribution, ProxyEnv
    from dp_gym.evaluation import run_episode

    env = ProxyEnv(dp_gym.config_of(env_id, **overrides), distribution or InstanceDistribution(),
                   secret_key=secret_key)
    try:
        controllers = {spec: controller_factory(spec, env_id)(env) for spec in [ACTION_ZERO, *specs]}
        # one noise stream for all: with a key every controller meets the same instance *and* noise on a seed
        return {name: np.array([run_episode(controller, env, seed, name, stream="").final_val_ppl for seed in seeds])
                for name, controller in controllers.items()}
    finally:
        env.close()


def score(metrics: np.ndarray, reference: np.ndarray) -> float:
    """Mean log-ratio of ``metrics`` to ``reference`` (inf when any metric is not finite)."""
    ratio = np.asarray(metrics, dtype=np.float64) / np.asarray(reference, dtype=np.float64)
    return float(np.mean(np.log(ratio))) if np.all(np.isfinite(ratio)) and np.all(ratio > 0) else math.inf


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_controller`.

    Attributes:
        chosen: the spec to deploy (``action0`` when no candidate beat it).
        scores: every candidate's :func:`score` against action 0 (action 0: 0).
        metrics: every candidate's final metric per instance.
        seeds: the public seeds of the instances.
        data_seeds: the public data seeds of the instances' proxies.
    """

    chosen: str
    scores: dict[str, float]
    metrics: dict[str, list[float]]
    seeds: list[int]
    data_seeds: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_contents_digest(file: str | Path) -> str:
    """SHA-256 of what a saved model holds: its zip members' names and bytes, in name order. Not
    the archive's bytes: SB3 stamps members with the time of the save, so the final model of a run
    that ended on a checkpoint (the same model, saved a second later) would count twice, and its
    selection would spend more proxy episodes than the baselines are tuned with. A file that is not
    a zip is hashed whole."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(file) as archive:
            for name in sorted(archive.namelist()):
                for part in (name.encode(), archive.read(name)):
                    digest.update(len(part).to_bytes(8, "little") + part)
    except zipfile.BadZipFile:
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()


def checkpoint_specs(run_dir: str | Path) -> list[str]:
    """The candidates of a training run: every checkpoint's model and the final model, as specs
    (``algo:PATH``; the algorithm from the run's ``run.json``), oldest first; a file identical to
    an earlier one (the final model is the last checkpoint's when training ended on one) once
    (:func:`model_contents_digest`)."""
    run_dir = Path(run_dir)
    run_json = run_dir / "run.json"
    if not run_json.exists():
        raise FileNotFoundError(f"{run_json} does not exist: give the --out folder of a finished `dp-gym train` run")
    algo = json.loads(run_json.read_text())["algo"]
    files = [path / "model.zip" for _, path in reversed(checkpoints(run_dir / "checkpoints"))
             if (path / "model.zip").exists()]
    if (run_dir / "model.zip").exists():
        files.append(run_dir / "model.zip")
    specs, seen = [], set()
    for file in files:
        digest = model_contents_digest(file)
        if digest not in seen:
            seen.add(digest)
            specs.append(f"{algo}:{file}")
    return specs


def select_controller(env_id: str, candidates: Sequence[str], instances: int = 8, first_seed: int = 100,
                      distribution=None, secret_key=None, report: Callable[[str], None] | None = None,
                      **overrides: Any) -> Selection:
    """The candidate (or action 0) with the lowest :func:`score` on ``instances`` held-out public
    proxy instances (public seeds ``first_seed`` onwards, data seeds :data:`HELD_OUT_DATA_SEEDS`
    unless ``distribution`` names its own). Spends no privacy (see the module docstring)."""
    from dp_gym.engine.randomness import SecretKey, resolve_secret_key
    from dp_gym.envs import InstanceDistribution

    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    distribution = distribution or dataclasses.replace(InstanceDistribution(), seeds=HELD_OUT_DATA_SEEDS)
    key = resolve_secret_key(secret_key) or SecretKey(secrets.token_hex(32))
    seeds = list(range(first_seed, first_seed + instances))
    results = proxy_check(env_id, list(candidates), seeds, distribution, key, **overrides)
    reference = results[ACTION_ZERO]
    scores = {name: score(metrics, reference) for name, metrics in results.items()}
    chosen = min(scores, key=lambda name: (scores[name], name != ACTION_ZERO))
    if report is not None:
        for name, value in scores.items():
            report(f"{name}: {100 * (math.exp(value) - 1):+.1f}% (geometric mean vs action 0)"
                   + ("  <- chosen" if name == chosen else ""))
    return Selection(chosen, scores, {name: metrics.tolist() for name, metrics in results.items()}, seeds,
                     list(distribution.seeds))


def select_checkpoint(env_id: str, run_dir: str | Path, instances: int = 8, first_seed: int = 100,
                      report: Callable[[str], None] | None = None, **kwargs: Any) -> Selection:
    """:func:`select_controller` over a training run's checkpoints (:func:`checkpoint_specs`);
    writes ``run_dir/selection.json``."""
    from dp_gym.evaluation.report import write_json

    selection = select_controller(env_id, checkpoint_specs(run_dir), instances, first_seed, report=report, **kwargs)
    write_json({"env_id": env_id, **selection.to_dict(),
                "privacy": "public proxies only: the choice spends no privacy"}, Path(run_dir) / SELECTION_JSON)
    return selection


def export_selected(run_dir: str | Path, destination: str | Path) -> Path:
    """Copy what a run's ``selection.json`` chose into ``destination`` as a self-contained
    controller: ``model.zip`` (the chosen checkpoint), the run's ``run.json`` (its training and
    privacy report) and ``selection.json`` (the evidence; ``chosen`` names the exported file,
    relative to its folder, and ``chosen_in_run`` the run's). The three are written into a staging
    folder that then replaces ``destination``, so a crash never leaves a model beside another
    run's report. This is how ``make pretrained`` ships a selected checkpoint. Returns the model's
    path.

    Raises:
        ValueError: the selection chose action 0 (no checkpoint beat it): there is no model to ship.
    """
    run_dir, destination = Path(run_dir), Path(destination)
    chosen = selected_spec(run_dir)
    if chosen == ACTION_ZERO:
        raise ValueError(f"{run_dir / SELECTION_JSON} chose action 0 (no checkpoint beat it on the held-out "
                         "proxies): there is no model to export; deploy `action0` instead")
    algo, _, model = chosen.partition(":")
    evidence = json.loads((run_dir / SELECTION_JSON).read_text())
    evidence.update({"chosen": f"{algo}:model.zip", "chosen_in_run": chosen, "exported": True})
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        shutil.copyfile(model, staging / "model.zip")
        shutil.copyfile(run_dir / "run.json", staging / "run.json")
        (staging / SELECTION_JSON).write_text(json.dumps(evidence, indent=1))
        os.chmod(staging, 0o755)  # shipped: readable by whoever installs the package (mkdtemp's is 0o700)
        for file in staging.iterdir():
            os.chmod(file, 0o644)
        old = destination.with_name(f".{destination.name}.old") if destination.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(destination, old)
        os.replace(staging, destination)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination / "model.zip"


def selected_spec(run_dir: str | Path) -> str:
    """The spec a run's ``selection.json`` chose."""
    path = Path(run_dir) / SELECTION_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `dp-gym select {run_dir}` first")
    selection = json.loads(path.read_text())
    if selection.get("exported"):  # an exported controller's file is named relative to its folder
        algo, _, model = selection["chosen"].partition(":")
        return f"{algo}:{Path(run_dir) / model}"
    return selection["chosen"]
