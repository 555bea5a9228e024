"""DP fine-tuning as a Gymnasium environment."""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np

from dp_gym.config import ConfigError, EnvConfig
from dp_gym.engine.randomness import SecretKey
from dp_gym.envs.actions import ActionCodec
from dp_gym.envs.fine_tuning import FineTuningRun, RunFailure
from dp_gym.envs.observations import NonFiniteObservation, ObservationBuilder
from dp_gym.envs.rewards import RewardContext, get_reward
from dp_gym.envs.validation import validate_config
from dp_gym.privacy import MAX_NOISE_MULTIPLIER, BudgetExhaustedError
from dp_gym.tasks import create_task, resolve_task

logger = logging.getLogger(__name__)

#: the keys ``reset(options=...)`` accepts
RESET_OPTIONS = ("noise_stream", "instance")
#: the config fields an episode's instance may set (they change the budget, never a layout)
INSTANCE_FIELDS = ("epsilon", "sample_rate", "max_updates")
#: what an episode of a public proxy covers
SCOPE_PUBLIC_PROXY = "a public proxy: no private data was used, so no private data's privacy was spent"


def _task_arguments(config: EnvConfig) -> dict[str, Any]:
    """The task's keyword arguments; a run that returns its last iterate never reads a public
    selection split, so a task that takes ``n_select`` builds none unless the config asks for one
    (64 selection examples of a 336-pixel LLaVA are 64 x 3 x 336^2 pixels plus 64 x 576 x 1024
    cached vision features: ~240 MB of float32). The proxies do the same
    (:class:`dp_gym.envs.proxy.ProxyEnv`)."""
    arguments = config.task_arguments()
    if (config.returned_model != "best_public" and "n_select" not in arguments
            and "n_select" in inspect.signature(resolve_task(config.task)).parameters):
        arguments["n_select"] = 0
    return arguments


class DPFineTuneEnv(gym.Env):
    """One episode = one DP fine-tuning run under a fixed (epsilon, delta) budget.

    A step decodes the action into per-group clip / noise / prune, fits the interval into the
    privacy budget, runs K DP updates, evaluates on public validation data and returns ``(obs,
    reward, terminated, truncated, info)``. ``terminated``: the budget cannot pay for another step
    at the largest noise the config allows, or the run failed (a NaN or inf parameter or validation
    loss: ``info["failure"]`` says which, the reward is ``failure_reward``); ``truncated``:
    ``max_updates`` reached.

    **The returned iterate.** With ``returned_model: best_public`` the env also scores every
    step's iterate on the task's public selection split and, when the episode ends, puts the best
    one back into the model: the final ``val_loss`` (validation split), the terminal reward and
    the model (attacks, a saved model) are then the returned iterate's. ``info["returned_updates"]``
    says which iterate it is and ``info["last_val_loss"]`` what the last one scored. Choosing among
    DP releases by public data is post-processing: the epsilon is the run's, as with ``last``.

    **Budget.** :class:`dp_gym.privacy.PrivacyBudget` decides, before any update runs, whether the
    asked interval fits. If not, mode ``project`` raises every group's noise by one common factor to
    the smallest that fits, and mode ``terminate`` ends the episode without running it. When the
    controller chooses the noise, the rule is a Rényi filter at an order pinned at reset (Feldman &
    Zrnic 2021); either way the epsilon spent never exceeds the budget, for any action sequence.

    **Secret randomness.** The noise and the Poisson batches never derive from the public seed
    alone: each episode draws fresh OS entropy, unless a secret key (``secret_key=`` or
    ``$DP_GYM_SECRET_KEY``) makes ``(key, config, seed, noise_stream)`` reproducible.
    ``reset(seed=...)`` seeds only public randomness: the next episodes' public seeds.

    Args:
        config: an :class:`EnvConfig`, a mapping, or None for the defaults.
        task: a task to use instead of the one the config names (the config's layouts still apply):
            a public proxy (``Task.proxy``) for training controllers without private data.
        secret_key: see above; never stored in the config, a checkpoint or a results file.
        noise_stream: the stream of episodes whose reset names none (``dp-gym train`` names its own).
        **overrides: config fields to override.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | dict[str, Any] | None = None, *, task=None,
                 secret_key: SecretKey | bytes | str | None = None, noise_stream: str = "", **overrides: Any):
        if isinstance(config, EnvConfig):
            config = EnvConfig.from_dict(config.to_dict(), **overrides) if overrides else config
        else:
            config = EnvConfig.from_dict(config or {}, **overrides)
        self.config = self.base_config = validate_config(config)
        self.default_noise_stream = str(noise_stream)
        self.task = task if task is not None else create_task(config.task, **_task_arguments(config))
        if config.returned_model == "best_public" and not self.task.has_selection_split:
            raise ConfigError(f"returned_model 'best_public' needs a public selection split, and task "
                              f"{type(self.task).__name__} has none (Task.evaluate_selection; for text tasks: "
                              "task_kwargs.selection_records with your own val_records, or n_select > 0)")
        self.run = FineTuningRun(self.task, config, secret_key=secret_key)
        self.group_names = self.run.group_names
        self.codec = ActionCodec(config, self.group_names)
        self.observer = ObservationBuilder(config, self.group_names)
        self.action_space = self.codec.space
        self.observation_space = self.observer.space
        reward = config.reward
        self.reward_fn = functools.partial(get_reward(reward["name"]), **reward.get("kwargs", {}))
        self._pace: np.ndarray | None = self.budget.pace(config.max_updates) if self._paced else None
        self._episode: dict[str, Any] = {}
        #: seconds spent per phase since construction: dp_update, evaluation, accounting, total_step
        self.timings: dict[str, float] = defaultdict(float)

    @contextmanager
    def _timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] += time.perf_counter() - start

    @property
    def budget(self):
        """The episode's :class:`dp_gym.privacy.PrivacyBudget` (ledger, filter, noise)."""
        return self.run.budget

    @property
    def _paced(self) -> bool:
        return "noise" in self.codec.controlled and self.config.noise_scale == "paced"

    # ------------------------------------------------------------------ layouts and actions
    @property
    def action_layout(self) -> list[str]:
        """The name of every action entry, e.g. ``clip/transformer.h.0``."""
        return self.codec.layout

    @property
    def observation_layout(self) -> list[str]:
        """The name of every observation entry, e.g. ``log_noisy_grad_norm/head``, ``val_loss``."""
        return self.observer.layout

    def noise_reference(self) -> np.ndarray | None:
        """The budget's noise the action is read against: the calibrated noise (``noise:
        calibrated``), the current pace (``noise_scale: paced``), or None."""
        if self.config.controls["noise"] == "calibrated":
            return self.budget.calibrated_sigmas()
        return self._pace.copy() if self._paced else None

    def calibrated_group_noise(self) -> np.ndarray:
        """Plain DP-SGD's equal per-group noise: spends the budget in exactly ``max_updates``."""
        return self.budget.calibrated_sigmas()

    def encode_action(self, clip=None, noise=None, prune=None) -> np.ndarray:
        """The action that asks for these per-group controls now (for heuristics)."""
        return self.codec.encode(clip=clip, noise=noise, prune=prune, noise_reference=self.noise_reference())

    def decode_action(self, action) -> dict[str, dict[str, float]]:
        """Per-group ``{"clip", "noise", "prune"}`` the action asks for now (before the budget's fit)."""
        return self._decode(action).as_dict(self.group_names)

    def _decode(self, action):
        """The action's controls against the budget's noise (under ``pace_unit: budget`` the pace
        for the share of the budget the action spends, see :meth:`_spending_pace`)."""
        reference = self.noise_reference()
        if self._paced and self.config.pace_unit == "budget":
            updates = min(self.config.updates_per_step, self.config.max_updates - self.run.updates)
            reference = self._spending_pace(self.codec.pace_factor(action), updates)
        return self.codec.decode(action, reference)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode.

        Args:
            seed: the public seed (Gymnasium's); without one, the next public seed of this env.
            options: ``{"noise_stream": label}`` tells apart episodes that share a secret key and
                seed on the same data (see :class:`dp_gym.engine.randomness.EpisodeRandomness`);
                ``{"instance": {"epsilon": ..., "sample_rate": ..., "max_updates": ...}}`` runs this
                episode under another budget (the layouts stay; the next reset without an instance
                returns to the configured one).

        Raises:
            ValueError: for an unknown option or instance field; ``ConfigError`` for a bad value.
        """
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(f"reset options {unknown} are unknown; allowed: {list(RESET_OPTIONS)}")
        instance = dict(options.get("instance") or {})
        unknown = sorted(set(instance) - set(INSTANCE_FIELDS))
        if unknown:
            raise ValueError(f"instance fields {unknown} are unknown; allowed: {list(INSTANCE_FIELDS)}")
        self.config = EnvConfig.from_dict({**self.base_config.to_dict(), **instance}) if instance else self.base_config
        self.observer.config = self.config
        public_seed = int(seed) if seed is not None else int(self.np_random.integers(2**63 - 1))
        self.run.reset(public_seed, str(options.get("noise_stream", self.default_noise_stream)), config=self.config)
        self._pace = self.budget.pace(self.config.max_updates) if self._paced else None
        val_loss = self.run.base_val_loss
        observation = self.observer.initial(val_loss, self.run.expected_batch_size)
        self._episode = {"val_loss": val_loss, "previous_update": None, "observation": observation, "done": False,
                         "noise_multiplier": 0.0, "best": None, "last_val_loss": val_loss, "returned_updates": 0}
        if self.config.returned_model == "best_public":
            # the base model is public: the fallback when no iterate ever scores a finite selection loss
            self._episode["best"] = {"selection_loss": math.inf, "val_loss": val_loss, "updates": 0,
                                     "parameters": self.run.trained_parameters()}
        return observation, self._info(None, None, projected=False)

    def step(self, action):
        with self._timed("total_step"):
            return self._step(action)

    def _step(self, action):
        if not self._episode:
            raise RuntimeError("call reset() before step()")
        if self._episode["done"]:
            raise RuntimeError("the episode has ended; call reset()")
        cfg, run, episode, budget = self.config, self.run, self._episode, self.budget
        decoded = self._decode(action)
        updates = min(cfg.updates_per_step, cfg.max_updates - run.updates)
        with self._timed("accounting"):
            epsilon_before = budget.epsilon_spent()
            fit = budget.fit(decoded.noise, updates, project=cfg.budget_mode == "project")

        val_before, failure = episode["val_loss"], None
        observation, val_loss = episode["observation"].copy(), val_before  # (a new array every step)
        if fit.feasible:
            try:
                run.check_finite()  # a parameter changed from outside since the last step: spend nothing
                with self._timed("dp_update"):
                    reports = run.run_updates(decoded.clip, fit.sigmas, decoded.prune, updates)
                with self._timed("evaluation"):
                    evaluated = run.evaluate()
                if not math.isfinite(evaluated):
                    raise RunFailure(f"non-finite validation loss ({evaluated}) after {run.updates} update(s)", reports)
                with self._timed("accounting"):
                    fraction = budget.fraction_spent()
                observation = self.observer.build(reports, episode["previous_update"], evaluated, val_before, fraction,
                                                  run.updates, fit.noise_multiplier, run.expected_batch_size)
                val_loss = evaluated
                episode.update(previous_update=reports[-1].noisy_update, observation=observation, val_loss=val_loss,
                               noise_multiplier=fit.noise_multiplier, last_val_loss=val_loss,
                               returned_updates=run.updates)
                if cfg.returned_model == "best_public":
                    with self._timed("evaluation"):
                        self._keep_if_best(evaluated)
            except (RunFailure, NonFiniteObservation) as error:
                failure = str(error)
                logger.warning("episode ends: %s", failure)

        terminated = not fit.feasible or failure is not None or self._budget_spent()
        truncated = not terminated and run.updates >= cfg.max_updates
        done = terminated or truncated
        returning = cfg.returned_model == "best_public"
        if done and returning:
            val_loss = self._return_best(val_loss, failed=failure is not None)
        reward = cfg.failure_reward if failure is not None else float(self.reward_fn(RewardContext(
            val_loss_base=run.base_val_loss, val_loss_before=val_before, val_loss=val_loss,
            epsilon_before=epsilon_before, epsilon=budget.epsilon_spent(), epsilon_budget=cfg.epsilon,
            updates=run.updates, max_updates=cfg.max_updates, terminal=done)))
        if not math.isfinite(reward):
            if returning and not done:  # the episode ends here: it returns its kept iterate too
                self._return_best(val_loss, failed=True)
            failure, terminated, truncated, done = f"the reward function returned {reward}", True, False, True
            logger.warning("episode ends: %s", failure)
            reward = cfg.failure_reward
        episode["done"] = done
        if not done and self._paced:
            try:
                self._pace = budget.pace(cfg.max_updates - run.updates)
            except BudgetExhaustedError:  # nothing left to pace: the next fit is infeasible
                self._pace = np.full(len(self.group_names), MAX_NOISE_MULTIPLIER)
        info = self._info((decoded.clip, fit.sigmas, decoded.prune), decoded.noise, projected=fit.projected)
        if failure is not None:
            info["failure"] = failure
        return observation, float(reward), bool(terminated), bool(truncated), info

    # ------------------------------------------------------------------ the returned iterate
    def _keep_if_best(self, val_loss: float) -> None:
        """Keep the current iterate if its public selection loss is the lowest so far (a non-finite
        one is never kept)."""
        selection_loss = self.run.evaluate_selection()
        best = self._episode["best"]
        if math.isfinite(selection_loss) and selection_loss < best["selection_loss"]:
            best["parameters"] = None  # (one kept copy at a time)
            self._episode["best"] = {"selection_loss": selection_loss, "val_loss": val_loss,
                                     "updates": self.run.updates, "parameters": self.run.trained_parameters()}

    def _return_best(self, val_loss: float, failed: bool) -> float:
        """At the episode's end, put the kept iterate back into the model; its validation loss (the
        episode's final one). The base model (public) is kept from reset, so a run whose every
        iterate failed returns it (``returned_updates`` 0); the last iterate stays when it is the
        kept one. The kept copy is freed afterwards."""
        best = self._episode["best"]
        if best["updates"] == self.run.updates and not failed:
            returned = val_loss
        else:
            self.run.load_trained_parameters(best["parameters"])
            self._episode.update(val_loss=best["val_loss"], returned_updates=best["updates"])
            returned = best["val_loss"]
        best["parameters"] = None
        return returned

    # ------------------------------------------------------------------ budget
    def _spending_pace(self, factor: float, updates: int) -> np.ndarray:
        """``pace_unit: budget``: the equal per-group noise under which this step spends ``f^-2``
        times the even share of what is left, the pace for ``round(remaining * f^2)`` updates (at
        least this step's). The step that ends the episode spends everything left. A function of
        the ledger and the action only: it costs no privacy."""
        remaining = self.config.max_updates - self.run.updates
        spread = remaining if remaining <= updates else max(updates, round(remaining * factor**2))
        if spread == remaining:
            return self._pace.copy()  # the even pace (at the first step plain DP-SGD's calibrated noise)
        try:
            return self.budget.pace(spread)
        except BudgetExhaustedError:  # nothing left: the fit is infeasible and the episode ends
            return np.full(len(self.group_names), MAX_NOISE_MULTIPLIER)

    def _largest_noise(self) -> np.ndarray:
        """The largest per-group noise the config lets an interval use (the range's top for noise in
        the action; no limit for paced or fixed noise, which the projection may raise)."""
        n = len(self.group_names)
        if self.config.controls["noise"] == "calibrated":
            return self.budget.calibrated_sigmas()
        if "noise" in self.codec.controlled and not self._paced:
            return np.full(n, self.config.noise_range[1])
        return np.full(n, MAX_NOISE_MULTIPLIER)

    def _budget_spent(self) -> bool:
        """True when even the largest noise the config allows cannot pay for another step."""
        cfg, run = self.config, self.run
        remaining = cfg.max_updates - run.updates
        if remaining <= 0:
            return False
        z = self.budget.composed_noise_multiplier(self._largest_noise())
        return not self.budget.fits(z, min(cfg.updates_per_step, remaining))

    # ------------------------------------------------------------------ info
    def _info(self, applied, asked_noise, projected: bool) -> dict[str, Any]:
        cfg, run, budget = self.config, self.run, self.budget
        val_loss = self._episode["val_loss"]
        info: dict[str, Any] = {
            "epsilon": budget.epsilon_spent(),
            "epsilon_budget": cfg.epsilon,
            # the share of the budget spent, linear in evenly paced updates (the filter's RDP units)
            "budget_spent": budget.fraction_spent(),
            "delta": cfg.delta,
            "accounting": budget.rule,
            "noise_multiplier": self._episode["noise_multiplier"],
            "sigma_eff": self._episode["noise_multiplier"],  # deprecated alias of noise_multiplier (one release)
            "val_loss": val_loss,
            "val_metric": self.task.metric(val_loss),  # the task's public metric (metric_name)
            "updates": run.updates,
            "privacy_valid": cfg.privacy_valid,
            "budget_projected": projected,
        }
        if cfg.returned_model != "last":
            info.update(returned_updates=self._episode["returned_updates"], last_val_loss=self._episode["last_val_loss"])
        if self.task.metric_name == "perplexity":
            info["val_ppl"] = info["val_metric"]
        if applied is not None:
            clip, noise, prune = applied
            # np.array copies: infos must not share objects between steps (users keep them)
            info.update(clip=np.array(clip, dtype=np.float64), noise=np.array(noise, dtype=np.float64),
                        prune=np.array(prune, dtype=np.float64),
                        asked_noise=np.array(asked_noise, dtype=np.float64))
        return info

    def privacy_report(self):
        """The current episode's :class:`dp_gym.privacy.PrivacyReport` (privacy_valid from the config)."""
        report = self.budget.report()
        if self.task.public_training_data:
            report = report.with_scope(SCOPE_PUBLIC_PROXY, private_episodes=0)
        return report if self.config.privacy_valid else report.invalidated()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this episode after a crash: the run (weights, optimizer,
        ledger: a private artefact, keep it as you keep the data), the episode and the public RNG.
        The secret randomness is not in it: with the same key a resume re-derives it, without one
        the rest of the episode draws fresh secret noise."""
        return {
            "config": self.base_config.public_dict(),
            "instance": {name: getattr(self.config, name) for name in INSTANCE_FIELDS},
            "run": self.run.state_dict(),
            "episode": copy.deepcopy(self._episode),
            "pace": None if self._pace is None else self._pace.copy(),
            "np_random": copy.deepcopy(self.np_random.bit_generator.state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a checkpointed episode.

        Raises:
            ValueError: for a checkpoint of another config, or whose ledger does not account every
                update (the field is named).
        """
        mine, theirs = self.base_config.public_dict(), EnvConfig.with_defaults(state["config"])
        if theirs != mine:
            fields = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(f"the checkpoint was written by an environment with another config (fields {fields})")
        if not self.task.public_training_data:
            changed = sorted(k for k, v in state["instance"].items() if getattr(self.base_config, k) != v)
            if changed:
                raise ValueError(f"checkpoint field instance changes {changed} of a private environment: a private "
                                 "run resumes under its configured budget only")
        self.config = EnvConfig.from_dict({**self.base_config.to_dict(), **state["instance"]})
        self.observer.config = self.run.config = self.config
        self.run.load_state_dict(state["run"])
        self._episode = copy.deepcopy(state["episode"])
        self._pace = None if state["pace"] is None else np.array(state["pace"])
        self.np_random.bit_generator.state = copy.deepcopy(state["np_random"])

    def close(self) -> None:
        self._episode = {}
