"""Online mode (the RLDP setting): one fine-tuning episode, the controller acting (and, for SAC,
learning) while the model trains. Outputs the fine-tuned model (``save_pretrained``), the
controller, and a privacy report.

Exactly one private episode runs: learning stops at the first episode end (the budget spent, or
``max_updates`` reached). Stable-Baselines3 would otherwise reset the environment and go on
learning on the same private data in a second episode, which the report would not cover.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
from stable_baselines3.common.callbacks import BaseCallback

import dp_gym
from agents.heuristics import make_controller
from agents.rl import algorithm, load_hyperparams
from dp_gym.evaluation import run_episode, write_json
from dp_gym.tasks import SupportsTokenizer

ONLINE_ALGOS = ("sac", "td3", "tqc")
SCOPE_LEARNED = ("end to end: one private episode; the controller learned during it from its privatized "
                 "observations and public-validation rewards only")
SCOPE_HEURISTIC = "this episode; a heuristic tuned on other private runs adds their epsilon"


class FinalStateRecorder(gym.Wrapper):
    """Keeps the model, privacy report and info of each episode's last step, and counts the
    episodes that touched the private data (made at least one update).

    SB3's vectorized envs reset right after a terminal step, which restores the base weights;
    this wrapper saves the fine-tuned state first.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.final: dict[str, Any] | None = None
        self.private_episodes = 0
        self._counted = False

    def reset(self, **kwargs):
        self._counted = False
        return self.env.reset(**kwargs)

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        unwrapped = self.env.unwrapped
        if unwrapped.run.updates > 0 and not self._counted:
            self.private_episodes += 1
            self._counted = True
        if terminated or truncated:
            self.final = {"model_state": copy.deepcopy(unwrapped.run.model.state_dict()),
                          "privacy": unwrapped.privacy_report(), "info": dict(info)}
        return observation, reward, terminated, truncated, info


class StopAtEpisodeEnd(BaseCallback):
    """Stops ``learn`` right after the first episode ends: no second private episode."""

    def _on_step(self) -> bool:
        return not any(self.locals["dones"])


def finetune_online(env_id: str, controller: str = "sac", out: str | Path = "runs/finetune", seed: int = 0,
                    env_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune once under the env's budget with ``controller`` (``sac``/``td3``/``tqc`` learn
    online; a heuristic name just acts); write ``out/model``, ``out/controller*``,
    ``out/privacy_report.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = FinalStateRecorder(dp_gym.make(env_id, noise_stream=f"finetune/{controller}/seed={seed}",
                                         **(env_overrides or {})))
    unwrapped = env.unwrapped
    start = time.perf_counter()
    if controller in ONLINE_ALGOS:
        kwargs, _ = load_hyperparams(controller, env_id)
        steps = env.spec.max_episode_steps
        kwargs["learning_starts"] = min(kwargs.get("learning_starts", 10), max(steps // 5, 1))
        model = algorithm(controller)("MlpPolicy", env, seed=seed, verbose=0, **kwargs)
        model.learn(total_timesteps=steps, callback=StopAtEpisodeEnd())  # one episode, learning while fine-tuning
        model.save(out / "controller.zip")
    else:
        policy = make_controller(controller, env)
        run_episode(policy, env, seed, controller)
        (out / "controller.json").write_text(json.dumps(policy.describe(), indent=1))
    final = env.final
    if final is None:
        raise RuntimeError("the episode did not finish")
    if env.private_episodes != 1:
        raise RuntimeError(f"online mode ran {env.private_episodes} private episodes; it must run exactly one")
    model = unwrapped.run.model
    model.load_state_dict(final["model_state"])
    model.save_pretrained(out / "model")
    if isinstance(unwrapped.task, SupportsTokenizer):
        unwrapped.task.tokenizer.save_pretrained(out / "model")
    privacy = final["privacy"].with_scope(SCOPE_LEARNED if controller in ONLINE_ALGOS else SCOPE_HEURISTIC,
                                          private_episodes=env.private_episodes)
    info = final["info"]
    report = {**privacy.to_dict(), "controller": controller, "env_id": env_id, "env_overrides": env_overrides or {},
              "wall_time_s": time.perf_counter() - start, "val_loss": info["val_loss"], "val_ppl": info["val_metric"],
              "base_val_ppl": unwrapped.task.metric(unwrapped.run.base_val_loss), "failure": info.get("failure")}
    write_json(report, out / "privacy_report.json")
    env.close()
    return report
