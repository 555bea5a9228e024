"""Online mode (the RLDP setting): one long fine-tuning episode, the controller acting (and, for
SAC, learning) while the model trains. Outputs the fine-tuned model (``save_pretrained``), the
controller, and a privacy report.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym

import dp_gym
from agents.evaluate import run_episode
from agents.heuristics import make_controller
from agents.rl import algorithm, load_hyperparams
from dp_gym.tasks import perplexity


class FinalStateRecorder(gym.Wrapper):
    """Keeps a copy of the model, ledger and info of the episode's last step.

    SB3's vectorized envs reset right after a terminal step, which restores the base weights;
    this wrapper saves the fine-tuned state first.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.final: dict[str, Any] | None = None

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            run = self.env.unwrapped.run
            self.final = {"model_state": copy.deepcopy(run.model.state_dict()), "ledger": run.ledger.to_dict(),
                          "info": dict(info)}
        return observation, reward, terminated, truncated, info


def privacy_report(env, ledger: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    config = env.unwrapped.config
    return {
        "epsilon": info["epsilon"], "epsilon_budget": config.epsilon, "delta": config.delta,
        "accountant": config.accountant, "sample_rate": config.sample_rate, "updates": info["updates"],
        "history": ledger["history"], "privacy_valid": bool(info["privacy_valid"]),
        "val_loss": info["val_loss"], "val_ppl": info["val_ppl"],
    }


def finetune_online(env_id: str, controller: str = "sac", out: str | Path = "runs/finetune", seed: int = 0,
                    env_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune once under the env's budget with ``controller`` (``sac``/``td3``/``tqc`` learn
    online; a heuristic name just acts); write ``out/model``, ``out/controller*``,
    ``out/privacy_report.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = FinalStateRecorder(dp_gym.make(env_id, **(env_overrides or {})))
    unwrapped = env.unwrapped
    start = time.perf_counter()
    if controller in ("sac", "td3", "tqc"):
        kwargs, _ = load_hyperparams(controller, env_id)
        steps = env.spec.max_episode_steps
        kwargs["learning_starts"] = min(kwargs.get("learning_starts", 10), max(steps // 5, 1))
        model = algorithm(controller)("MlpPolicy", env, seed=seed, verbose=0, **kwargs)
        model.learn(total_timesteps=steps)  # exactly one episode: learning while fine-tuning
        model.save(out / "controller.zip")
        final = env.final
    else:
        policy = make_controller(controller, env)
        run_episode(policy, env, seed, controller)
        (out / "controller.json").write_text(json.dumps(policy.describe(), indent=1))
        final = env.final
    if final is None:
        raise RuntimeError("the episode did not finish")
    model = unwrapped.run.model
    model.load_state_dict(final["model_state"])
    model.save_pretrained(out / "model")
    unwrapped.task.tokenizer.save_pretrained(out / "model")
    report = privacy_report(env, final["ledger"], final["info"])
    report.update(epsilon_scope="end to end: the controller saw only this episode's privatized observations"
                  if controller in ("sac", "td3", "tqc") else
                  "this episode; a heuristic tuned on other private runs adds their epsilon",
                  controller=controller, env_id=env_id, env_overrides=env_overrides or {}, wall_time_s=time.perf_counter() - start,
                  base_val_ppl=perplexity(unwrapped.run.base_val_loss))
    (out / "privacy_report.json").write_text(json.dumps(report, indent=1))
    env.close()
    return report
