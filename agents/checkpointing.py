"""Training checkpoints that resume exactly: the SB3 model, its replay buffer, the environment's
episode in progress and every random generator, written atomically.

A checkpoint is one folder ``checkpoints/step_<n>``: it is written under a temporary name and
renamed when complete (an atomic rename), so a crash mid-write leaves at worst a stray temporary
folder, never a half checkpoint. It is taken at a clean boundary of SB3's loop: after the step's
transition is stored and its gradient steps are done (the start of the next rollout, or the end of
training), never in the middle.

It holds the fine-tuned weights and the ledger (private artefacts: keep them as you keep the data),
never the secret randomness: with the same secret key a resume re-derives the same noise, without
one it draws fresh secret noise, which is just as private but not identical. With environments in
several processes (``n_envs > 1``) the episodes in progress are not saved: a resume restarts them.

:func:`load_latest` tries the newest checkpoint first and falls back to older ones, with one line
per unreadable (truncated, corrupted or edited) checkpoint.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

CHECKPOINT = re.compile(r"step_(\d+)")
#: wrapper attributes that make up an episode in progress, by wrapper class name
WRAPPER_STATE = {
    "TimeLimit": ("_elapsed_steps",),
    "Monitor": ("rewards", "needs_reset", "episode_returns", "episode_lengths", "episode_times", "total_steps",
                "current_reset_info"),
    "OrderEnforcing": ("_has_reset",),
    "PassiveEnvChecker": ("checked_reset", "checked_step", "checked_render", "checked_data_reuse", "_previous_data"),
}


def _state_names(layer) -> tuple[str, ...]:
    """The episode attributes of a wrapper, found by its class or a base class (so a subclass such as
    RL Zoo's patched TimeLimit keeps its counter)."""
    for cls in type(layer).__mro__:
        if cls.__name__ in WRAPPER_STATE:
            return WRAPPER_STATE[cls.__name__]
    return ()


def _wrappers(env) -> list:
    chain = []
    while env is not None:
        chain.append(env)
        env = getattr(env, "env", None)
    return chain


def environment_state(env) -> dict[str, Any]:
    """The episode in progress: the dp-gym environment's state and the wrappers' counters."""
    wrappers = [{name: getattr(layer, name) for name in _state_names(layer)} for layer in _wrappers(env)]
    return {"env": env.unwrapped.state_dict(), "wrappers": wrappers}


def restore_environment(env, state: dict[str, Any]) -> None:
    env.unwrapped.load_state_dict(state["env"])
    layers = _wrappers(env)
    if len(layers) != len(state["wrappers"]):
        raise ValueError(f"checkpoint field wrappers has {len(state['wrappers'])} layers, the environment {len(layers)}")
    for layer, saved in zip(layers, state["wrappers"], strict=True):
        for name, value in saved.items():
            setattr(layer, name, value)


def random_state(model: BaseAlgorithm) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "action_space": model.action_space.np_random.bit_generator.state}


def restore_random_state(model: BaseAlgorithm, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    model.action_space.np_random.bit_generator.state = state["action_space"]


def save_checkpoint(model: BaseAlgorithm, directory: Path) -> Path:
    """Write ``directory/step_<num_timesteps>`` atomically; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"step_{model.num_timesteps}"
    staging = directory / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    model.save(staging / "model.zip")
    if getattr(model, "replay_buffer", None) is not None:
        model.save_replay_buffer(staging / "replay_buffer.pkl")
    envs = getattr(model.get_env(), "envs", None)  # None for environments in other processes
    environment = environment_state(envs[0]) if envs is not None and len(envs) == 1 else None
    torch.save({"num_timesteps": model.num_timesteps, "random": random_state(model),
                "environment": environment}, staging / "training_state.pt")
    if target.exists():  # the same step saved again (e.g. at the end of training): replace it
        shutil.rmtree(target)
    os.rename(staging, target)
    return target


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``directory``, newest first (temporary folders are ignored)."""
    found = []
    for path in Path(directory).glob("step_*"):
        match = CHECKPOINT.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def load_checkpoint(cls: type[BaseAlgorithm], path: Path, env, **load_kwargs: Any) -> BaseAlgorithm:
    """Load one checkpoint into a model on ``env`` and restore the episode and the generators.

    Raises:
        Exception: anything a damaged file raises (zip, pickle, torch), or ``ValueError`` naming the
            field of a checkpoint whose environment state does not add up (see
            :meth:`dp_gym.DPFineTuneEnv.load_state_dict`).
    """
    state = torch.load(path / "training_state.pt", weights_only=False)
    # seed=None: SB3 would otherwise re-seed every generator from the saved seed on load; without a
    # saved episode (environments in several processes) the episodes restart
    model = cls.load(path / "model.zip", env=env, custom_objects={"seed": None},
                     force_reset=state["environment"] is None, **load_kwargs)
    if model.num_timesteps != state["num_timesteps"]:
        raise ValueError(f"checkpoint field num_timesteps is {state['num_timesteps']} in training_state.pt but "
                         f"{model.num_timesteps} in model.zip")
    if hasattr(model, "load_replay_buffer"):
        model.load_replay_buffer(path / "replay_buffer.pkl")
    if state["environment"] is not None:
        (wrapped,) = model.get_env().envs
        restore_environment(wrapped, state["environment"])
    restore_random_state(model, state["random"])
    return model


def load_latest(cls: type[BaseAlgorithm], directory: Path, env, report: Callable[[str], None] = print,
                **load_kwargs: Any) -> tuple[BaseAlgorithm, int]:
    """The newest readable checkpoint under ``directory``: ``(model, num_timesteps)``.

    Raises:
        FileNotFoundError: when there is no checkpoint, or none is readable.
    """
    found = checkpoints(directory)
    if not found:
        raise FileNotFoundError(f"no checkpoint to resume from in {directory}")
    for steps, path in found:
        try:
            return load_checkpoint(cls, path, env, **load_kwargs), steps
        except Exception as error:  # noqa: BLE001 - any damage to any file means: try the previous one
            message = str(error).splitlines()[0] if str(error) else ""
            report(f"checkpoint {path} is unreadable ({type(error).__name__}: {message}); trying the previous one")
    raise FileNotFoundError(f"no readable checkpoint in {directory} (tried {len(found)})")


class AtomicCheckpoints(BaseCallback):
    """Checkpoint every ``every`` steps at the start of a rollout (transition stored, gradient
    steps done), and once more at the end of training."""

    def __init__(self, directory: Path, every: int):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.directory, self.every = Path(directory), every
        self._saved_at: int | None = None

    def _save(self) -> None:
        if self.num_timesteps > 0 and self._saved_at != self.num_timesteps:
            save_checkpoint(self.model, self.directory)
            self._saved_at = self.num_timesteps

    def _on_rollout_start(self) -> None:
        if self.num_timesteps % self.every == 0:
            self._save()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self._save()
