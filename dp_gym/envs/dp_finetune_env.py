"""DP fine-tuning as a Gymnasium environment."""

from __future__ import annotations

import copy
import functools
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dp_gym.config import EnvConfig
from dp_gym.envs.actions import ActionCodec
from dp_gym.envs.fine_tuning import FineTuningRun, RunSettings
from dp_gym.envs.observations import ObservationBuilder
from dp_gym.envs.rewards import RewardContext, get_reward
from dp_gym.privacy import (
    BudgetExhaustedError,
    calibrate_noise,
    composed_noise_multiplier,
    equal_group_sigmas,
    min_noise_for_budget,
    scale_sigmas_to,
)
from dp_gym.privacy.calibration import MAX_NOISE_MULTIPLIER
from dp_gym.tasks import create_task, perplexity


class DPFineTuneEnv(gym.Env):
    """One episode = one DP fine-tuning run under a fixed (epsilon, delta) budget.

    A step decodes the action into per-group clip / noise / prune, enforces the budget, runs K
    DP updates, evaluates on public validation data and returns ``(obs, reward, terminated,
    truncated, info)``. ``terminated``: the budget cannot pay for another step (even at the
    largest configured noise); ``truncated``: ``max_updates`` reached.

    **Budget.** Before running K updates with composed noise multiplier ``z``, the env asks the
    ledger for ``epsilon_if(z, q, K)``. If it exceeds the budget, mode ``project`` raises every
    group's noise by one common factor to the smallest ``z`` that fits
    (:func:`dp_gym.privacy.min_noise_for_budget`, which errs on the feasible side), and mode
    ``terminate`` ends the episode without running them. Either way the epsilon spent never
    exceeds the budget, for any action sequence.

    Args:
        config: an :class:`EnvConfig`, a mapping, or None for the defaults.
        **overrides: config fields to override.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | dict[str, Any] | None = None, **overrides: Any):
        if isinstance(config, EnvConfig):
            config = EnvConfig.from_dict(config.to_dict(), **overrides) if overrides else config
        else:
            config = EnvConfig.from_dict(config or {}, **overrides)
        self.config = config
        self.task = create_task(config.task, **config.task_arguments())
        self.run = FineTuningRun(self.task, RunSettings(
            sample_rate=config.sample_rate, delta=config.delta, accountant=config.accountant,
            optimizer=config.optimizer, learning_rate=config.learning_rate, grouping=config.grouping,
            count_noise=config.count_noise, loss_noise=config.loss_noise, loss_bound=config.loss_bound,
            oracle=config.observation == "oracle", seed=config.seed))
        self.group_names = self.run.group_names
        self.codec = ActionCodec(config, self.group_names)
        self.observer = ObservationBuilder(config, self.group_names)
        self.action_space = self.codec.space
        self.observation_space = self.observer.space
        reward = config.reward
        self.reward_fn = functools.partial(get_reward(reward["name"]), **reward.get("kwargs", {}))
        self._n_counted = len(self.group_names) if config.count_noise is not None else 0
        if config.controls["noise"] == "calibrated" or config.noise_scale == "paced":
            # calibrated noise, or the pace before any update (so actions encode before reset())
            self.codec.calibrated_noise = self.calibrated_group_noise()
        largest_noise = MAX_NOISE_MULTIPLIER if config.noise_scale == "paced" else config.noise_range[1]
        self._max_noise_z = composed_noise_multiplier(
            [largest_noise] * len(self.group_names), config.count_noise, self._n_counted, config.loss_noise)
        self._seeded = False
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

    # ------------------------------------------------------------------ layouts
    @property
    def action_layout(self) -> list[str]:
        """The name of every action entry, e.g. ``clip/transformer.h.0``."""
        return self.codec.layout

    @property
    def observation_layout(self) -> list[str]:
        """The name of every observation entry, e.g. ``log_noisy_grad_norm/head``, ``val_loss``."""
        return self.observer.layout

    def decode_action(self, action) -> dict[str, dict[str, float]]:
        """Per-group ``{"clip", "noise", "prune"}`` the action asks for (before budget enforcement)."""
        return self.codec.decode(action).as_dict(self.group_names)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = self.config.seed if not self._seeded else int(self.np_random.integers(2**31 - 1))
        self._seeded = True
        self.run.reset(seed)
        self._update_pace()
        val_loss = self.run.base_val_loss
        observation = self.observer.initial(val_loss)
        self._episode = {
            "val_loss": val_loss,
            "previous_update": None,
            "observation": observation,
            "done": False,
            "sigma_eff": 0.0,
        }
        return observation, self._info(None, None, projected=False)

    def step(self, action):
        with self._timed("total_step"):
            return self._step(action)

    def _step(self, action):
        if not self._episode:
            raise RuntimeError("call reset() before step()")
        if self._episode["done"]:
            raise RuntimeError("the episode has ended; call reset()")
        cfg, run, episode = self.config, self.run, self._episode
        decoded = self.codec.decode(action)
        asked_noise = noise = decoded.noise
        updates = min(cfg.updates_per_step, cfg.max_updates - run.updates)
        z = composed_noise_multiplier(noise, cfg.count_noise, self._n_counted, cfg.loss_noise)
        projected, out_of_budget = False, False
        with self._timed("accounting"):
            epsilon_before = run.ledger.epsilon()
            if run.ledger.epsilon_if(z, cfg.sample_rate, updates) > cfg.epsilon:
                if cfg.budget_mode == "terminate":
                    out_of_budget = True
                else:
                    try:
                        z_fit = min_noise_for_budget(run.ledger, cfg.epsilon, cfg.sample_rate, updates)
                        noise = np.array(scale_sigmas_to(noise, z_fit, cfg.count_noise, self._n_counted,
                                                         cfg.loss_noise))
                        projected = True
                    except (BudgetExhaustedError, ValueError):
                        out_of_budget = True

        val_before = episode["val_loss"]
        if out_of_budget:
            observation, val_loss = episode["observation"], val_before
        else:
            with self._timed("dp_update"):
                reports = run.run_updates(decoded.clip, noise, decoded.prune, updates)
            with self._timed("evaluation"):
                val_loss = run.evaluate()
            with self._timed("accounting"):
                epsilon = run.ledger.epsilon()
            observation = self.observer.build(reports, episode["previous_update"], val_loss, val_before,
                                              epsilon, run.updates)
            episode.update(previous_update=reports[-1].noisy_update, observation=observation,
                           val_loss=val_loss, sigma_eff=reports[-1].noise_multiplier)
        with self._timed("accounting"):
            terminated = out_of_budget or self._budget_spent()
        truncated = not terminated and run.updates >= cfg.max_updates
        reward = self.reward_fn(RewardContext(
            val_loss_base=run.base_val_loss, val_loss_before=val_before, val_loss=val_loss,
            epsilon_before=epsilon_before, epsilon=run.ledger.epsilon(), epsilon_budget=cfg.epsilon,
            updates=run.updates, max_updates=cfg.max_updates, terminal=terminated or truncated))
        episode["done"] = terminated or truncated
        if not episode["done"]:
            self._update_pace()
        applied = (decoded.clip, noise, decoded.prune)
        info = self._info(applied, asked_noise, projected=projected)
        return observation, float(reward), bool(terminated), bool(truncated), info

    # ------------------------------------------------------------------ budget
    def calibrated_group_noise(self, updates: int | None = None) -> np.ndarray:
        """Equal per-group noise that spends the budget exactly in ``updates`` (default
        ``max_updates``), the privatized statistics included: plain DP-SGD's calibration."""
        cfg = self.config
        z = calibrate_noise(cfg.epsilon, cfg.delta, cfg.sample_rate, updates or cfg.max_updates, cfg.accountant)
        return np.array(equal_group_sigmas(z, len(self.group_names), cfg.count_noise, self._n_counted, cfg.loss_noise))

    def paced_group_noise(self) -> np.ndarray:
        """Equal per-group noise that spends the *remaining* budget exactly over the remaining
        updates (``min_noise_for_budget`` on the ledger so far): the pace of ``noise_scale: paced``.
        At the start of an episode it equals :meth:`calibrated_group_noise`."""
        cfg, run = self.config, self.run
        remaining = max(cfg.max_updates - run.updates, 1)
        if run.updates == 0:
            return self.calibrated_group_noise()
        z = min_noise_for_budget(run.ledger, cfg.epsilon, cfg.sample_rate, remaining)
        return np.array(equal_group_sigmas(z, len(self.group_names), cfg.count_noise, self._n_counted, cfg.loss_noise))

    def _update_pace(self) -> None:
        if self.config.noise_scale != "paced":
            return
        try:
            self.codec.calibrated_noise = self.paced_group_noise()
        except (BudgetExhaustedError, ValueError):  # nothing left to pace: the budget check ends the episode
            self.codec.calibrated_noise = np.full(len(self.group_names), MAX_NOISE_MULTIPLIER)

    def _budget_spent(self) -> bool:
        """True when even the largest configured noise cannot pay for another step."""
        cfg, run = self.config, self.run
        remaining = cfg.max_updates - run.updates
        if remaining <= 0:
            return False
        return run.ledger.epsilon_if(self._max_noise_z, cfg.sample_rate, min(cfg.updates_per_step, remaining)) > cfg.epsilon

    # ------------------------------------------------------------------ info
    def _info(self, applied, asked_noise, projected: bool) -> dict[str, Any]:
        cfg, run = self.config, self.run
        val_loss = self._episode["val_loss"]
        info: dict[str, Any] = {
            "epsilon": run.ledger.epsilon(),
            "delta": cfg.delta,
            "sigma_eff": self._episode["sigma_eff"],
            "val_loss": val_loss,
            "val_ppl": perplexity(val_loss),
            "updates": run.updates,
            "privacy_valid": cfg.privacy_valid,
            "budget_projected": projected,
        }
        if applied is not None:
            clip, noise, prune = applied
            # np.array copies: infos must not share objects between steps (users keep them)
            info.update(clip=np.array(clip, dtype=np.float64), noise=np.array(noise, dtype=np.float64),
                        prune=np.array(prune, dtype=np.float64),
                        asked_noise=np.array(asked_noise, dtype=np.float64))
        return info

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this episode identically after a crash."""
        return {
            "config": self.config.to_dict(),
            "run": self.run.state_dict(),
            "episode": copy.deepcopy(self._episode),
            "np_random": copy.deepcopy(self.np_random.bit_generator.state),
            "seeded": self._seeded,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != self.config.to_dict():
            raise ValueError("the checkpoint was written by an environment with another config")
        self.run.load_state_dict(state["run"])
        self._episode = copy.deepcopy(state["episode"])
        self.np_random.bit_generator.state = copy.deepcopy(state["np_random"])
        self._seeded = state["seeded"]
        torch.set_rng_state(state["torch_rng"])
        self._update_pace()  # a function of the restored ledger

    def close(self) -> None:
        self._episode = {}

