"""Tuning the plain DP-SGD baseline: a grid over the clip, then over the learning rate.

Every grid point is a **full fine-tuning run on the private data** (scored on public validation
data). Choosing the best point is a function of all those runs, so a model fine-tuned with the
tuned values has spent the composed epsilon of every grid run plus its own:
:func:`tuning_privacy` reports it (:func:`dp_gym.privacy.compose`). Each grid point runs on its own
secret noise stream, so no two of them share noise even with a secret key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dp_gym.evaluation import EpisodeResult, run_episode
from dp_gym.privacy import PrivacyReport, compose

#: what a tuned baseline's epsilon covers, written into tune_vanilla.json
TUNING_SCOPE = ("every grid run, each a full fine-tuning run on the private data, composed; a model fine-tuned "
                "with the tuned values adds its own run")


@dataclass
class TuningResult:
    """The run behind each grid value (scored by final public-validation perplexity).

    ``episodes``: the private runs this tuning made (a run reused from an earlier tuning is in
    ``runs`` but not here, so composing tunings counts each private run once).
    """

    runs: dict[float, EpisodeResult]
    episodes: list[EpisodeResult] = field(default_factory=list)

    @property
    def scores(self) -> dict[float, float]:
        return {value: run.final_val_ppl for value, run in self.runs.items()}

    @property
    def best(self) -> float:
        scores = self.scores
        return min(scores, key=scores.get)


def tune_vanilla(env_id: str, clips: Sequence[float], seed: int, overrides: dict[str, Any],
                 report: Callable[[str], None] | None = None) -> TuningResult:
    """Grid-search the plain DP-SGD clip (one private run per clip, scored on public validation)."""
    import dp_gym
    from agents.heuristics import make_controller

    env = dp_gym.make(env_id, **overrides)
    runs = {}
    for clip in clips:
        result = run_episode(make_controller("vanilla", env, clip=clip), env, seed, f"tune-vanilla C={clip:g}")
        runs[clip] = result
        if report:
            report(f"  vanilla C={clip:g}: val ppl {result.final_val_ppl:.2f} (epsilon {result.epsilon:.3f})")
    env.close()
    return TuningResult(runs, list(runs.values()))


def tune_learning_rate(env_id: str, clip: float, learning_rates: Sequence[float], seed: int,
                       overrides: dict[str, Any], report: Callable[[str], None] | None = None,
                       episode_at_env_rate: EpisodeResult | None = None) -> TuningResult:
    """Grid-search the fine-tuning learning rate of plain DP-SGD at ``clip`` (one private run per
    rate, scored on public validation). ``episode_at_env_rate``: :func:`tune_vanilla`'s run at
    ``clip``, reused for the environment's own rate instead of spending another private run on it.

    The second stage of tuning the baseline: under Adam, a clip below every per-example norm
    only scales the whole clipped-and-noised sum, and Adam undoes a constant scale, so the clip
    grid alone cannot tune DP-SGD's step size; a controller that *changes* the clip over an
    episode changes the step size. A fair comparison tunes the baseline's learning rate too.
    """
    import dp_gym
    from agents.heuristics import make_controller
    from dp_gym.envs.registration import config_of

    env_rate = config_of(env_id, **overrides).learning_rate
    runs, episodes = {}, []
    for rate in learning_rates:
        if rate == env_rate and episode_at_env_rate is not None:
            result = episode_at_env_rate
            if report:
                report(f"  vanilla C={clip:g} lr={rate:g}: val ppl {result.final_val_ppl:.2f} (the clip search's run)")
        else:
            env = dp_gym.make(env_id, **{**overrides, "learning_rate": rate})
            result = run_episode(make_controller("vanilla", env, clip=clip), env, seed,
                                 f"tune-vanilla C={clip:g} lr={rate:g}")
            env.close()
            episodes.append(result)
            if report:
                report(f"  vanilla C={clip:g} lr={rate:g}: val ppl {result.final_val_ppl:.2f} "
                       f"(epsilon {result.epsilon:.3f})")
        runs[rate] = result
    return TuningResult(runs, episodes)


def tuning_privacy(*tunings: TuningResult) -> PrivacyReport:
    """The composed privacy of every private run the tunings made (see the module docstring)."""
    episodes = [episode for tuning in tunings for episode in tuning.episodes]
    return compose([episode.privacy for episode in episodes], TUNING_SCOPE)
