"""Where a sweep's jobs run: in this process (``local``) or as Ray Tune trials (``ray``).

A sweep is a list of independent :class:`Job` s (one episode of one controller at one seed, one
grid point of a tuning, one training run). Both backends run each job through the same
:func:`call_job` and give back one :class:`Outcome` per job, in the order given, so a report made
from them is the same whichever backend ran them (the same rows with a fixed secret key; without
one every episode draws fresh secret noise on either backend).

Failures are contained: a job that raises becomes an outcome with its error, and the other jobs
go on. The Ray backend keeps Tune's experiment state under ``<out>/ray/<name>-<digest of the
jobs>``; running the same sweep again with the same folder restores it with Tune's own
``Tuner.restore``: finished trials are skipped, interrupted and failed ones run again. A
*different* sweep in the same folder is a different experiment, never mixed with the first.

Nothing secret travels through Ray: a job's arguments are public (env id, overrides, controller
spec, public seed, noise-stream label), and a job whose arguments hold private records is refused
(Tune writes every trial's arguments into its experiment folder). With a secret key (``$DP_GYM_SECRET_KEY``), workers read it
from their own environment: a local Ray instance started here inherits this process's; on a
cluster, set it where each node's ``ray start`` runs. It is never put in the job, the runtime
environment or any file Tune writes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dp_gym.utils.redaction import JobError, file_safe_error, holds_records, report_contained

BACKENDS = ("local", "ray")
#: public environment variables a Ray job needs to behave like a local one (never the secret key)
FORWARDED_VARIABLES = ("DP_GYM_MODEL_PATH", "DP_GYM_THREADS", "PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY",
                       "HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class Job:
    """One unit of a sweep: ``function(**kwargs)``, where ``function`` is ``"module:name"``, importable
    wherever the job runs, and ``kwargs`` and the return value are JSON-serializable.

    ``key`` names the job in outcomes and in Tune's trial table; it must be unique in its sweep.
    ``imports``: modules to import first (``--gym-packages``: they register environment ids).
    """

    key: str
    function: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    imports: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What a job gave: its return value, or the error it raised (its :func:`file_safe_error` line)."""

    key: str
    value: Any = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


def call_job(job: Job) -> Any:
    """Run ``job`` in this process and return what its function returns."""
    for module in job.imports:
        importlib.import_module(module)
    module, _, name = job.function.partition(":")
    function = getattr(importlib.import_module(module), name)
    return function(**job.kwargs)


def _check_unique(jobs: Sequence[Job]) -> None:
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise ValueError(f"a sweep's job keys must be unique; repeated: {', '.join(repeated)}")


def _contained(job: Job) -> Outcome:
    try:
        return Outcome(job.key, value=call_job(job))
    except Exception as error:  # contained: reported with the job, the sweep goes on
        logging.getLogger(__name__).debug("job %s failed:\n%s", job.key, traceback.format_exc())
        return Outcome(job.key, error=report_contained(job.key, error))


def _worker_start() -> None:
    from dp_gym.utils.quiet import quiet_libraries
    from dp_gym.utils.threads import configure_threads

    configure_threads(1)  # one thread per worker process: they share the cores
    quiet_libraries()


class LocalBackend:
    """Run the jobs on this machine: one after another in this process, or in ``workers`` processes
    (spawned, one torch thread each)."""

    name = "local"

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, jobs: Sequence[Job], progress: Callable[[str], None] | None = None) -> list[Outcome]:
        _check_unique(jobs)
        if self.workers == 1:
            outcomes = []
            for job in jobs:
                if progress:
                    progress(job.key)
                outcomes.append(_contained(job))
            return outcomes
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if progress:
            progress(f"{len(jobs)} jobs in {self.workers} processes")
        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_start) as pool:
            return list(pool.map(_contained, jobs))


def _tune_trial(config: dict[str, Any]) -> None:
    """Tune's function trainable: one job, its return value reported as JSON."""
    from ray import tune

    from dp_gym.utils.threads import configure_threads

    configure_threads(config["threads"])
    job = Job(**{**config["job"], "imports": tuple(config["job"]["imports"])})
    try:
        payload = json.dumps(call_job(job))
    except Exception as error:
        # Tune writes a failed trial's traceback into the experiment folder: it gets the file-safe
        # line only, raised outside this block so that no original exception rides along as context
        failure = JobError(report_contained(job.key, error))
    else:
        tune.report({"payload": payload})
        return
    raise failure


def parse_resources(text: str | dict[str, float] | None) -> dict[str, float]:
    """``'{"CPU": 1, "GPU": 0.25}'`` -> the resources of one trial (default one CPU).

    Raises:
        ValueError: naming ``--resources`` for anything but a JSON object of non-negative numbers
            with at least one CPU or GPU.
    """
    if text is None:
        return {"CPU": 1.0}
    try:
        resources = json.loads(text) if isinstance(text, str) else dict(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--resources must be a JSON object such as '{{\"CPU\": 1, \"GPU\": 0.25}}': {error}") from None
    if not isinstance(resources, dict) or not resources:
        raise ValueError("--resources must be a non-empty JSON object such as '{\"CPU\": 1, \"GPU\": 0.25}'")
    for name, amount in resources.items():
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount < 0:
            raise ValueError(f"--resources {name} must be a non-negative number, got {amount!r}")
    if not resources.get("CPU") and not resources.get("GPU"):
        raise ValueError("--resources must give each trial some CPU or GPU")
    return {name: float(amount) for name, amount in resources.items()}


class RayBackend:
    """Each job is one Ray Tune trial (``tune.with_resources``, one grid value per job).

    Args:
        out: the sweep's output folder; Tune's experiment lives in ``out/ray/<name>``.
        address: a running cluster (``auto`` or ``ray://host:10001``); None starts a local instance.
        resources: one trial's resources (see :func:`parse_resources`).
        name: the experiment's name prefix (the kind of sweep; a digest of the jobs follows it).
        verbose: keep Ray's and Tune's console output.
    """

    name = "ray"

    def __init__(self, out: str | Path, address: str | None = None, resources: dict[str, float] | None = None,
                 name: str = "sweep", verbose: bool = False):
        self.out = Path(out).resolve()
        self.address = address
        self.resources = parse_resources(resources)
        self.experiment = name
        self.verbose = verbose

    @staticmethod
    def _ray():
        try:
            import ray
            from ray import tune  # noqa: F401  (the tune extra)
        except ImportError:
            raise ImportError("--backend ray needs Ray Tune: pip install 'dp-gym[ray]'") from None
        return ray

    def _start(self) -> None:
        ray = self._ray()
        # a trial runs where the command runs, so relative paths (a model file, --model-path) mean
        # the same on both backends; Tune would otherwise switch to the trial's own folder
        os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
        if not self.verbose:  # contained trial errors come back as outcomes; no tracebacks on the console
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter is silent at verbose=0
            for logger in ("ray", "ray.tune", "ray.train", "ray.air"):
                logging.getLogger(logger).setLevel(logging.CRITICAL)
        if ray.is_initialized():
            return
        env_vars = {name: os.environ[name] for name in FORWARDED_VARIABLES if os.environ.get(name)}
        env_vars["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
        ray.init(address=self.address, include_dashboard=False, log_to_driver=self.verbose,
                 logging_level=logging.INFO if self.verbose else logging.ERROR,
                 runtime_env={"env_vars": env_vars})

    def run(self, jobs: Sequence[Job], progress: Callable[[str], None] | None = None) -> list[Outcome]:
        _check_unique(jobs)
        for job in jobs:  # Tune writes every trial's arguments into the experiment folder
            if holds_records(job.kwargs):
                raise ValueError(f"{job.key}: its arguments hold private records (a *_records list), which Ray Tune "
                                 "would write into its experiment folder; put them in an environment YAML (--env "
                                 "my.yaml), which the trials read, or use --backend local")
        self._start()
        from ray import tune

        storage = self.out / "ray"
        # the experiment is named by its jobs: the same sweep run again finds its own state to
        # restore; another sweep in the same folder gets its own experiment, never a mixed one
        fingerprint = hashlib.sha256(json.dumps([asdict(job) for job in jobs], sort_keys=True,
                                                default=list).encode()).hexdigest()[:12]
        experiment = storage / f"{self.experiment}-{fingerprint}"
        threads = max(1, int(self.resources.get("CPU", 1)))
        trainable = tune.with_resources(_tune_trial, self.resources)
        if tune.Tuner.can_restore(str(experiment)):
            if progress:
                progress(f"resuming the Ray Tune experiment in {experiment}")
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable, restart_errored=True)
        else:
            space = [{"key": job.key, "function": job.function, "kwargs": job.kwargs, "imports": list(job.imports)}
                     for job in jobs]
            tuner = tune.Tuner(
                trainable,
                param_space={"job": tune.grid_search(space), "threads": threads},
                tune_config=tune.TuneConfig(trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
                run_config=tune.RunConfig(name=experiment.name, storage_path=str(storage), verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
        if progress:
            progress(f"{len(jobs)} Ray Tune trials, {self.resources} each")
        grid = tuner.fit()
        found: dict[str, Outcome] = {}
        for result in grid:
            key = result.config["job"]["key"]
            if result.error is not None:
                found[key] = Outcome(key, error=file_safe_error(result.error))
            elif "payload" in (result.metrics or {}):
                found[key] = Outcome(key, value=json.loads(result.metrics["payload"]))
            else:
                found[key] = Outcome(key, error="the trial reported no result")
        return [found.get(job.key, Outcome(job.key, error="the trial did not run")) for job in jobs]


def make_backend(name: str, out: str | Path | None = None, address: str | None = None,
                 resources: str | dict[str, float] | None = None, experiment: str = "sweep",
                 verbose: bool = False, workers: int = 1) -> LocalBackend | RayBackend:
    """The backend called ``name`` (``local``, with ``workers`` processes, or ``ray``).

    Raises:
        ValueError: for an unknown name, for Ray options given to the local backend, or for the Ray
            backend without an output folder (Tune's state, and so resuming, lives there).
    """
    if name not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "local":
        if address is not None or resources is not None:
            raise ValueError("--address and --resources are for --backend ray")
        return LocalBackend(workers)
    if out is None:
        raise ValueError("--backend ray needs --out: Tune keeps the sweep's state there (to resume it)")
    return RayBackend(out, address=address, resources=parse_resources(resources), name=experiment, verbose=verbose)
