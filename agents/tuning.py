"""Tuning the baselines on public proxies by default: plain DP-SGD's clip, then its learning rate
(grids); any heuristic's parameters (a grid); a piecewise-linear clip/noise schedule (Optuna).

On **public proxies** (:class:`dp_gym.envs.ProxyEnv`; the default) a grid point is scored over a
few proxy episodes, every grid point on the same instances; no private data is touched, so the
tuned baseline's deployment is its only private episode. On the **private** environment
(``proxy=None``) every grid point is a full fine-tuning run on the private data, and choosing the
best is a function of all of them: :func:`tuning_privacy` reports their composed epsilon. Each grid
point runs on its own secret noise stream, so no two of them share noise even with a secret key.

A grid point's score is the mean change of public-validation log-perplexity over its episodes
(lower is better; on one private instance it ranks like the final perplexity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dp_gym.envs import InstanceDistribution, ProxyEnv
from dp_gym.evaluation import EpisodeResult, run_episode
from dp_gym.privacy import PrivacyReport, compose

TUNING_SCOPE = ("every grid run, each a full fine-tuning run on the private data, composed; a model fine-tuned "
                "with the tuned values adds its own run")
TUNING_SCOPE_PUBLIC = "tuned on public proxies only: no private data, no privacy spent"


@dataclass
class TuningResult:
    """The runs behind each grid value and its score (mean log-perplexity change, lower is better).

    ``episodes``: the runs this tuning made (a run reused from an earlier tuning is in ``runs`` but
    not here, so composing tunings counts each private run once). ``params``: the controller's
    keyword arguments of each key of ``runs`` (searches that are not a grid of plain values).
    """

    runs: dict[Any, list[EpisodeResult]]
    episodes: list[EpisodeResult] = field(default_factory=list)
    delta: float = 1e-5
    params: dict[Any, dict[str, Any]] = field(default_factory=dict)

    @property
    def scores(self) -> dict[Any, float]:
        """Mean log-perplexity change of each grid point; a point with a diverged run scores +inf."""
        scores = {}
        for value, runs in self.runs.items():
            score = float(np.mean([np.log(r.final_val_ppl / r.base_val_ppl) for r in runs]))
            scores[value] = score if np.isfinite(score) else float("inf")
        return scores

    @property
    def best(self) -> float:
        scores = self.scores
        return min(scores, key=scores.get)


def _environment(env_id: str, overrides: dict[str, Any], private: bool, proxy: InstanceDistribution | None):
    import dp_gym

    if private:
        return dp_gym.make(env_id, **overrides)
    return ProxyEnv(dp_gym.config_of(env_id, **overrides), proxy or InstanceDistribution())


def _grid_point(env, controller, seed: int, episodes: int, label: str) -> list[EpisodeResult]:
    return [run_episode(controller, env, seed + k, label) for k in range(episodes)]


def grid_point(env_id: str, overrides: dict[str, Any], private: bool, proxy: dict[str, Any] | None, controller: str,
               kwargs: dict[str, Any], seed: int, episodes: int, label: str) -> list[dict[str, Any]]:
    """One grid point as a sweep job (:mod:`dp_gym.utils.backends`): heuristic ``controller(**kwargs)``
    for ``episodes`` episodes from public seed ``seed`` on noise stream ``label``, on proxies drawn from
    ``proxy`` (an :class:`InstanceDistribution` as a dict) or, with ``private``, on the private
    environment; the :class:`EpisodeResult` s as dicts."""
    from agents.heuristics import make_controller

    env = _environment(env_id, overrides, private, None if private else InstanceDistribution.from_dict(proxy))
    try:
        return [r.to_dict() for r in _grid_point(env, make_controller(controller, env, **kwargs), seed, episodes, label)]
    finally:
        env.close()


def _run_grid(backend, env_id: str, points: dict[Any, tuple[dict[str, Any], str, dict[str, Any], str]], seed: int,
              episodes: int, private: bool, proxy: InstanceDistribution | None) -> dict[Any, list[EpisodeResult]]:
    """Run every grid point (``key -> (overrides, controller, kwargs, label)``; the label is its noise
    stream and job key) on ``backend`` (default: here). A point that raised scores +inf: its
    episodes are :func:`dp_gym.evaluation.crashed_episode` s, each private one bounded by its budget.

    When the points do not fill a local backend's worker processes evenly (3 points, 2 workers), each
    point's episodes are split into one job per worker: episode ``k`` still runs from public seed
    ``seed + k`` on the point's noise stream, so the results are the same (with a secret key, the
    same numbers), only sooner."""
    from agents.controllers import crashed_deployment
    from dp_gym.utils.backends import Job, LocalBackend

    backend = backend or LocalBackend()
    workers = getattr(backend, "workers", 1)  # (Ray: one trial a grid point, as its own scheduler sees fit)
    parts = 1 if len(points) % workers == 0 else min(workers, episodes)
    bounds = [(episodes * i // parts, episodes * (i + 1) // parts) for i in range(parts)]
    proxy_dict = None if private else (proxy or InstanceDistribution()).to_dict()
    jobs = [(key, first, last, Job(label if parts == 1 else f"{label} [episodes {first}-{last - 1}]",
                                   "agents.tuning:grid_point",
                                   {"env_id": env_id, "overrides": overrides, "private": private, "proxy": proxy_dict,
                                    "controller": controller, "kwargs": kwargs, "seed": seed + first,
                                    "episodes": last - first, "label": label}))
            for key, (overrides, controller, kwargs, label) in points.items() for first, last in bounds if last > first]
    runs: dict[Any, list[EpisodeResult]] = {key: [] for key in points}
    for (key, first, last, job), outcome in zip(jobs, backend.run([job for *_, job in jobs]), strict=True):
        if not outcome.failed:
            runs[key] += [EpisodeResult.from_dict(data) for data in outcome.value]
            continue
        crashed = [crashed_deployment(job.key, seed + k, outcome.error, env_id, job.kwargs["overrides"])
                   for k in range(first, last)]
        if not private:  # a proxy episode touches no private data, finished or not
            crashed = [replace(r, privacy=PrivacyReport.nothing(r.privacy.delta, TUNING_SCOPE_PUBLIC)) for r in crashed]
        runs[key] += crashed
    return runs


def tune_vanilla(env_id: str, clips: Sequence[float], seed: int, overrides: dict[str, Any],
                 report: Callable[[str], None] | None = None, private: bool = False,
                 proxy: InstanceDistribution | None = None, episodes: int = 1, backend=None) -> TuningResult:
    """Grid-search the plain DP-SGD clip: ``episodes`` runs per clip, on public proxy instances drawn
    from ``proxy`` (default distribution if None) or, with ``private``, on the private environment
    (then each run is a private one). ``backend``: where the grid points run (default: here, one
    after another; see :mod:`dp_gym.utils.backends`)."""
    points = {clip: (overrides, "vanilla", {"clip": clip}, f"tune-vanilla C={clip:g}") for clip in clips}
    runs = _run_grid(backend, env_id, points, seed, episodes, private, proxy)
    made = [r for clip in clips for r in runs[clip]]
    if report:
        for clip in clips:
            report(f"  vanilla C={clip:g}: {_outcome(runs[clip])}{'' if private else ' (public proxies)'}")
    return TuningResult(runs, made, made[0].privacy.delta)


def _outcome(runs: list[EpisodeResult]) -> str:
    if any(r.error for r in runs):
        return f"raised {runs[0].error}"
    return f"val ppl {np.mean([r.final_val_ppl for r in runs]):.2f}"


def tune_learning_rate(env_id: str, clip: float, learning_rates: Sequence[float], seed: int,
                       overrides: dict[str, Any], report: Callable[[str], None] | None = None,
                       episode_at_env_rate: list[EpisodeResult] | None = None, private: bool = False,
                       proxy: InstanceDistribution | None = None, episodes: int = 1, backend=None) -> TuningResult:
    """Grid-search the fine-tuning learning rate of plain DP-SGD at ``clip`` (as :func:`tune_vanilla`).
    ``episode_at_env_rate``: :func:`tune_vanilla`'s runs at ``clip``, reused for the environment's own
    rate instead of running them again. ``backend``: as in :func:`tune_vanilla`.

    The second stage of tuning the baseline: under Adam, a clip below every per-example norm
    only scales the whole clipped-and-noised sum, and Adam undoes a constant scale, so the clip
    grid alone cannot tune DP-SGD's step size; a controller that *changes* the clip over an
    episode changes the step size. A fair comparison tunes the baseline's learning rate too.
    """
    import dp_gym

    env_rate = dp_gym.config_of(env_id, **overrides).learning_rate
    reused = env_rate if episode_at_env_rate is not None and env_rate in learning_rates else None
    points = {rate: ({**overrides, "learning_rate": rate}, "vanilla", {"clip": clip},
                     f"tune-vanilla C={clip:g} lr={rate:g}") for rate in learning_rates if rate != reused}
    runs = _run_grid(backend, env_id, points, seed, episodes, private, proxy)
    made = [r for rate in points for r in runs[rate]]
    if reused is not None:
        runs[reused] = episode_at_env_rate
    runs = {rate: runs[rate] for rate in learning_rates}
    if report:
        where = "private runs" if private else "public proxies"
        for rate in learning_rates:
            label = "the clip search's runs" if rate == reused else where
            report(f"  vanilla C={clip:g} lr={rate:g}: {_outcome(runs[rate])} ({label})")
    delta = next(iter(runs.values()))[0].privacy.delta
    return TuningResult(runs, made, delta)


def tune_controller(env_id: str, name: str, grid: dict[str, dict[str, Any]], seed: int, overrides: dict[str, Any],
                    report: Callable[[str], None] | None = None, private: bool = False,
                    proxy: InstanceDistribution | None = None, episodes: int = 1,
                    env_overrides: dict[str, dict[str, Any]] | None = None, backend=None) -> TuningResult:
    """Grid-search any registered heuristic: ``grid`` maps a label to its keyword arguments (and,
    through ``env_overrides[label]``, to config overrides such as a learning rate); ``episodes``
    runs per point on public proxies (or, with ``private``, on the private data). ``runs`` is keyed
    by label. ``backend``: as in :func:`tune_vanilla`."""
    points = {label: ({**overrides, **(env_overrides or {}).get(label, {})}, name, kwargs, f"tune-{name} {label}")
              for label, kwargs in grid.items()}
    runs = _run_grid(backend, env_id, points, seed, episodes, private, proxy)
    if report:
        for label in grid:
            report(f"  {name} {label}: {_outcome(runs[label])}")
    made = [r for label in grid for r in runs[label]]
    return TuningResult(runs, made, made[0].privacy.delta)


SCHEDULE_CLIP_RANGE = (0.25, 4.0)
SCHEDULE_NOISE_RANGE = (0.7, 1.4)


def tune_schedule(env_id: str, trials: int, seed: int, overrides: dict[str, Any], clip: float | None = None,
                  knots: int = 3, report: Callable[[str], None] | None = None, private: bool = False,
                  proxy: InstanceDistribution | None = None, episodes: int = 1) -> TuningResult:
    """Black-box search of a piecewise-linear clip and noise schedule with Optuna's TPE sampler.

    Each of ``trials`` trials proposes ``knots`` clip factors in ``SCHEDULE_CLIP_RANGE`` and as many
    noise factors in ``SCHEDULE_NOISE_RANGE`` (log-uniform) for :class:`agents.heuristics.ScheduleController`
    at base clip ``clip`` (default: the env's action-0 clip, the geometric mean of ``clip_range``)
    and scores them over ``episodes`` episodes, the same instances for every trial (public proxies by
    default; with ``private``, private runs whose composition :func:`tuning_privacy` reports). The
    first trial is plain DP-SGD (all factors 1), so the search never ends below it on its own
    instances. The sampler is seeded with the public ``seed``: it sees only scores on public data
    (or, with ``private``, the composed runs are accounted). ``runs`` is keyed by trial number.
    """
    try:
        import optuna
    except ImportError:
        raise ImportError("the Optuna schedule baseline needs optuna: pip install 'dp-gym[tune]'") from None
    import dp_gym
    from agents.heuristics import make_controller

    if trials < 1 or knots < 1:
        raise ValueError(f"trials and knots must be >= 1, got trials={trials}, knots={knots}")
    config = dp_gym.config_of(env_id, **overrides)
    clip = float(np.sqrt(config.clip_range[0] * config.clip_range[1])) if clip is None else float(clip)
    env = _environment(env_id, overrides, private, proxy)
    runs, made, params = {}, [], {}

    def objective(trial) -> float:
        kwargs = {"clip": clip,
                  "clip_knots": [trial.suggest_float(f"clip_{k}", *SCHEDULE_CLIP_RANGE, log=True) for k in range(knots)],
                  "noise_knots": [trial.suggest_float(f"noise_{k}", *SCHEDULE_NOISE_RANGE, log=True)
                                  for k in range(knots)]}
        label = (f"tune-schedule trial {trial.number} clip={clip:g} "  # the stream: tells any two schedules apart
                 f"c={'/'.join(f'{c:.6g}' for c in kwargs['clip_knots'])} "
                 f"n={'/'.join(f'{n:.6g}' for n in kwargs['noise_knots'])}")
        results = _grid_point(env, make_controller("schedule", env, **kwargs), seed, episodes, label)
        runs[trial.number], params[trial.number] = results, kwargs
        made.extend(results)
        score = TuningResult({0: results}).scores[0]
        if report:
            report(f"  schedule trial {trial.number}: clip x{'/'.join(f'{c:.2f}' for c in kwargs['clip_knots'])} "
                   f"noise x{'/'.join(f'{n:.2f}' for n in kwargs['noise_knots'])}: val ppl "
                   f"{np.mean([r.final_val_ppl for r in results]):.2f}")
        return score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({**{f"clip_{k}": 1.0 for k in range(knots)}, **{f"noise_{k}": 1.0 for k in range(knots)}})
    study.optimize(objective, n_trials=trials)
    env.close()
    return TuningResult(runs, made, made[0].privacy.delta, params)


def tuning_privacy(*tunings: TuningResult) -> PrivacyReport:
    """The composed privacy of every private run the tunings made (nothing, on public proxies)."""
    reports = [episode.privacy for tuning in tunings for episode in tuning.episodes]
    if not reports or all(r.private_episodes == 0 for r in reports):
        invalid = any(not r.privacy_valid for r in reports)
        nothing = PrivacyReport.nothing(tunings[0].delta, TUNING_SCOPE_PUBLIC)
        return nothing.invalidated() if invalid else nothing
    return compose(reports, TUNING_SCOPE)
