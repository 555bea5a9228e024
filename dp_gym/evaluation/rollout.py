"""The one episode loop: run a controller on an environment and return a typed :class:`EpisodeResult`.

Everything that evaluates a controller (compare, evaluate, online mode, the audit, tuning, the
benchmarks) goes through :func:`run_episode`, so every result carries the same
:class:`dp_gym.privacy.PrivacyReport` from the episode's own budget.

Dependency rule: this module may import ``envs`` and below, never ``agents``; controllers are
anything with Stable-Baselines3's ``predict(obs, state, episode_start, deterministic)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dp_gym.privacy import PrivacyReport, compose
from dp_gym.utils.redaction import report_contained


@dataclass
class EpisodeResult:
    """One episode of one controller.

    ``final_val_ppl`` / ``base_val_ppl`` hold the task's public metric (``metric_name``:
    perplexity for the shipped tasks) after and before the episode.
    ``privacy`` is the episode's own report (scope: this episode); a caller that knows the
    episode was preceded by others on the same private data (tuning, training) widens the scope.
    ``attacks`` holds privacy attacks on the final model when they were asked for.
    ``returned_updates``: with ``returned_model: best_public``, the update count of the iterate the
    episode returned (``final_*`` are its metrics; ``trajectory`` holds every step's last iterate).
    ``failure`` says why the environment ended the episode early (a non-finite update, say): the
    episode is a result, ranked worst. ``error`` says that the episode *raised* (a crash, not a
    result of the controller): its metrics are NaN and summaries leave it out
    (:func:`crashed_episode`).
    """

    controller: str
    seed: int
    final_val_loss: float
    final_val_ppl: float
    base_val_ppl: float
    updates: int
    steps: int
    wall_time_s: float
    privacy: PrivacyReport
    groups: list[str] = field(default_factory=list)
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    attacks: dict[str, Any] | None = None
    failure: str | None = None
    metric_name: str = "perplexity"
    error: str | None = None
    returned_updates: int | None = None

    @property
    def epsilon(self) -> float:
        """The proven epsilon of the episode (its privacy report's)."""
        return self.privacy.epsilon

    @property
    def privacy_valid(self) -> bool:
        return self.privacy.privacy_valid

    def updates_to_reach(self, target_ppl: float) -> int | None:
        """First update count at which validation perplexity is <= ``target_ppl`` (None: never)."""
        for point in self.trajectory:
            if point["val_ppl"] <= target_ppl:
                return point["updates"]
        return None

    def summary(self, columns: Sequence[str] = ()) -> dict[str, Any]:
        """One flat row (no trajectory): metrics, the privacy report's headline fields, and the
        given attack ``columns``."""
        row = {"controller": self.controller, "seed": self.seed, "final_val_loss": self.final_val_loss,
               "final_val_ppl": self.final_val_ppl, "base_val_ppl": self.base_val_ppl,
               "epsilon": self.privacy.epsilon, "epsilon_spent": self.privacy.epsilon_spent,
               "epsilon_budget": self.privacy.epsilon_budget, "delta": self.privacy.delta,
               "accounting": self.privacy.accounting, "epsilon_scope": self.privacy.epsilon_scope,
               "private_episodes": self.privacy.private_episodes, "privacy_valid": self.privacy.privacy_valid,
               "updates": self.updates, "steps": self.steps, "wall_time_s": self.wall_time_s,
               "failure": self.failure}
        row["error"] = self.error
        row.update({column: (self.attacks or {}).get(column) for column in columns})
        return row

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["privacy"] = self.privacy.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeResult:
        """The inverse of :meth:`to_dict` (a result that travelled as JSON from a sweep's worker)."""
        return cls(**{**data, "privacy": PrivacyReport.from_dict(data["privacy"])})


#: the scope of an episode that raised before it finished (see :func:`crashed_episode`)
SCOPE_CRASHED = "an episode that raised: at most its budget (its privacy filter never lets an episode spend more)"


def crashed_episode(name: str, seed: int, error: str, config=None) -> EpisodeResult:
    """The result of an episode that raised: NaN metrics, ``error`` set, and privacy bounded by the
    episode's budget, ``epsilon = epsilon_budget`` of ``config`` (a :class:`dp_gym.config.EnvConfig`).
    The bound holds whatever the episode released before it raised: every release went through its
    privacy filter, which never lets the episode exceed the budget. Without a config (it did not
    build) nothing ran and nothing was released."""
    if config is None:
        privacy = PrivacyReport.nothing(0.0, "an episode whose configuration did not build: nothing ran")
    else:
        privacy = PrivacyReport(
            epsilon=config.epsilon, delta=config.delta, epsilon_budget=config.epsilon, epsilon_spent=config.epsilon,
            accounting="bounded by the budget", adaptive=True, updates=0, privacy_valid=config.privacy_valid,
            epsilon_scope=SCOPE_CRASHED)
    nan = float("nan")
    return EpisodeResult(controller=name, seed=seed, final_val_loss=nan, final_val_ppl=nan, base_val_ppl=nan,
                         updates=0, steps=0, wall_time_s=0.0, privacy=privacy, error=error)


def run_episode(controller, env, seed: int, name: str,
                after: Callable[[Any], dict[str, Any]] | None = None, stream: str | None = None) -> EpisodeResult:
    """One episode of ``controller`` on ``env`` from public seed ``seed``.

    The episode's secret noise stream is labelled with ``stream`` (default ``name``), so controllers
    compared on the same seeds with the same secret key never share noise (see ``reset``'s
    ``noise_stream``).
    ``after(env)``, if given, runs on the final state (before any reset) and fills ``attacks``.
    """
    unwrapped = env.unwrapped
    start = time.perf_counter()
    observation, info = env.reset(seed=seed, options={"noise_stream": name if stream is None else stream})
    base_ppl = info["val_metric"]
    trajectory = [{"updates": 0, "epsilon": 0.0, "budget_spent": 0.0, "val_ppl": base_ppl}]
    episode_start, state, steps, done = np.array([True]), None, 0, False
    while not done:
        action, state = controller.predict(observation, state=state, episode_start=episode_start, deterministic=True)
        observation, _, terminated, truncated, info = env.step(action)
        episode_start = np.array([False])
        steps += 1
        done = terminated or truncated
        # the iterate this step left (with ``returned_model: best_public`` the last step's info holds
        # the returned iterate's metric instead: that one is in the trajectory at its own step)
        last_metric = (unwrapped.task.metric(info["last_val_loss"]) if "last_val_loss" in info
                       else info["val_metric"])
        trajectory.append({
            "updates": info["updates"], "epsilon": info["epsilon"], "budget_spent": info["budget_spent"],
            "val_ppl": last_metric,
            "clip": info["clip"].tolist(), "noise": info["noise"].tolist(), "prune": info["prune"].tolist(),
            "budget_projected": info["budget_projected"],
        })
    return EpisodeResult(
        controller=name, seed=seed, final_val_loss=info["val_loss"], final_val_ppl=info["val_metric"],
        base_val_ppl=base_ppl, updates=info["updates"], steps=steps, wall_time_s=time.perf_counter() - start,
        privacy=unwrapped.privacy_report(), groups=list(unwrapped.group_names), trajectory=trajectory,
        attacks=after(env) if after is not None else None, failure=info.get("failure"),
        metric_name=unwrapped.task.metric_name, returned_updates=info.get("returned_updates"))


SCOPE_END_TO_END_PUBLIC = ("end to end: the controller was trained or tuned on public data only, so this deployment "
                           "is its only private episode")
SCOPE_END_TO_END_PRIVATE = ("end to end: the private episodes the controller was trained or tuned on, plus this "
                            "deployment, composed")


def end_to_end(episode: PrivacyReport, prior: PrivacyReport | None) -> PrivacyReport:
    """A deployment's privacy, including what its controller carries from training or tuning
    (``prior``; None: unknown, and the report keeps the scope of the episode alone)."""
    if prior is None or episode.private_episodes == 0:
        return episode
    if prior.private_episodes == 0:
        return episode.with_scope(SCOPE_END_TO_END_PUBLIC)
    composed = compose([prior, episode], SCOPE_END_TO_END_PRIVATE)
    return composed if episode.privacy_valid and prior.privacy_valid else composed.invalidated()


def compare(controllers: dict[str, Callable[[Any], Any]], make_env: Callable[[], Any], seeds: Sequence[int],
            progress: Callable[[str], None] | None = None, audit: bool = False,
            audit_canaries: int = 256, prior: dict[str, PrivacyReport | None] | None = None,
            streams: dict[str, str] | None = None) -> list[EpisodeResult]:
    """Run every controller on every seed. ``controllers`` maps a name to ``factory(env)``.

    ``prior`` maps a controller's name to what it carries from training or tuning (a
    :class:`PrivacyReport`; missing or None: unknown); each episode's report then covers it end to
    end (:func:`end_to_end`). ``streams`` maps a name to its noise stream (default: the name; give
    the full controller spec when two runs may share a name but not their parameters).

    With ``audit``, each episode's final model is attacked (canary exposure, membership inference;
    :func:`dp_gym.evaluation.privacy_attacks`), and each controller gets one extra training run, the
    one-run audit, whose epsilon lower bound is stored with every episode of that controller.
    """
    from dp_gym.evaluation.attacks import privacy_attacks
    from dp_gym.evaluation.audit import one_run_audit

    env = make_env()
    unwrapped = env.unwrapped
    after = None
    if audit:
        reference = unwrapped.task.build_model()
        after = lambda env: privacy_attacks(env.unwrapped.run.model, env.unwrapped.task, reference)  # noqa: E731
    results = []
    for name, factory in controllers.items():
        controller = factory(env)
        mine = []
        for seed in seeds:
            if progress:
                progress(f"{name}, seed {seed}")
            try:
                result = run_episode(controller, env, seed, name, after=after, stream=(streams or {}).get(name))
            except Exception as error:  # contained: the row says so, the comparison goes on
                result = crashed_episode(name, seed, report_contained(f"{name}, seed {seed}", error), unwrapped.config)
            result.privacy = end_to_end(result.privacy, (prior or {}).get(name))
            mine.append(result)
        if audit:
            if progress:
                progress(f"{name}, one-run audit ({audit_canaries} canaries)")
            config = unwrapped.config
            audit_config = config.from_dict({**config.to_dict(), "task_kwargs": {
                k: v for k, v in config.task_kwargs.items() if k not in ("n_canaries", "canary_repeats")}})
            bound = one_run_audit(audit_config, factory, n_canaries=audit_canaries, seed=seeds[0]).to_dict()
            for result in mine:
                result.attacks["audit"] = bound
                result.attacks["epsilon_lower_bound"] = bound["epsilon_lower_bound"]
        results.extend(mine)
    env.close()
    return results
