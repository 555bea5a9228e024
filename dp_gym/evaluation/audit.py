"""Empirical audit of the DP guarantee in one training run (Steinke, Nasr & Jagielski, 2023).

Procedure:

1. Draw ``m`` audit canaries, each a record of ``length`` uniformly random tokens (the random
   inputs of Steinke et al.: unlike a templated secret such as "insurance number 839221", nothing
   else in the data predicts them, so a model that trains on one visibly lowers its loss).
   Include each one in the private training split independently with probability 1/2 (a coin
   the auditor keeps).
2. Fine-tune once with the controller under audit (the environment's own DP updates and ledger).
3. Score every canary: ``s_i = L_ref(x_i) - L_target(x_i)`` (how much training lowered its loss;
   the reference is the public base model). Guess "included" for the ``k+`` highest scores,
   "excluded" for the ``k-`` lowest, abstain on the rest: ``r = k+ + k-`` guesses, ``v`` correct.
4. If training is ``(eps, delta)``-DP, the coins are hard to guess: by their Theorem 5.2,
   ``P[V >= v] <= P[Binomial(r, q) >= v] + 2 m delta * max_{1<=i<=v} P[v-i <= Binomial(r, q) < v] / i``
   with ``q = e^eps / (1 + e^eps)``. The audited lower bound is the largest ``eps`` that this
   p-value rejects at the chosen confidence; several ``(k+, k-)`` are tried with a Bonferroni
   split of the confidence, so the bound stays valid.

The unit of privacy is one record, so each canary appears once: a canary repeated ``k`` times
would be protected only at group-privacy level.

A correct configuration gives a bound at or below the ledger's epsilon (one run is a weak
attack: expect a bound far below it). The deliberately broken configuration ``no_noise`` adds no
gradient noise while the ledger still records the noise the controller asked for, so the reported
epsilon is false; the audit should then exceed it. Every result of a broken run says
``privacy_valid: false``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from dp_gym.config import EnvConfig
from dp_gym.data.clinical_notes import private_train_records
from dp_gym.evaluation.rollout import run_episode
from dp_gym.evaluation.scoring import record_losses

BROKEN_MODES = ("no_noise",)


def audit_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of ``v`` correct out of ``r`` guesses on ``m`` coins under ``(epsilon, delta)``-DP."""
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[B = v-1], P[B = v-2], ..., P[B = 0]
    worst = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(tail + 2 * m * delta * worst, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, alpha: float = 0.05, upper: float = 50.0) -> float:
    """The largest ``eps`` with p-value < ``alpha`` (0 when none): with confidence ``1 - alpha``,
    the training run is not ``(eps, delta)``-DP for any smaller ``eps``."""
    if audit_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    low, high = 0.0, upper
    if audit_p_value(m, r, v, high, delta) < alpha:
        return high
    for _ in range(60):  # the p-value grows with eps: bisect the crossing
        middle = (low + high) / 2
        if audit_p_value(m, r, v, middle, delta) < alpha:
            low = middle
        else:
            high = middle
    return low


def guess_counts(scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int) -> tuple[int, int]:
    """``(r, v)``: guess in for the ``k_plus`` top scores, out for the ``k_minus`` bottom ones."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    guessed_in, guessed_out = order[:k_plus], order[len(order) - k_minus :] if k_minus else order[:0]
    correct = int(included[guessed_in].sum()) + int((~included[guessed_out]).sum())
    return k_plus + k_minus, correct


@dataclass
class AuditResult:
    epsilon_lower_bound: float
    epsilon_reported: float
    delta: float
    confidence: float
    canaries: int
    included: int
    guesses: int
    correct: int
    k: int
    broken: str | None
    privacy_valid: bool
    updates: int
    val_ppl: float
    flagged: bool = field(init=False)

    def __post_init__(self) -> None:
        #: the audit contradicts the reported epsilon
        self.flagged = self.epsilon_lower_bound > self.epsilon_reported

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def audit_bound_from_scores(scores, included, delta: float, confidence: float = 0.95,
                            fractions: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4)) -> tuple[float, int, int, int]:
    """Best ``(bound, r, v, k)`` over ``k+ = k- = fraction * m`` with a Bonferroni split."""
    scores, included = np.asarray(scores, float), np.asarray(included, bool)
    m = len(scores)
    alpha = (1 - confidence) / len(fractions)
    best = (0.0, 0, 0, 0)
    for fraction in fractions:
        k = max(1, int(fraction * m))
        r, v = guess_counts(scores, included, k, k)
        bound = epsilon_lower_bound(m, r, v, delta, alpha)
        if bound > best[0] or best[1] == 0:
            best = (bound, r, v, k)
    return best


def random_token_canaries(tokenizer, m: int, length: int = 16, seed: int = 0) -> list[str]:
    """``m`` records of ``length`` uniformly random non-special tokens, decoded to text."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    vocabulary = np.array([i for i in range(len(tokenizer)) if i not in special])
    return [tokenizer.decode(rng.choice(vocabulary, size=length).tolist()) for _ in range(m)]


def _drop_gradient_noise(updater) -> None:
    """The broken configuration: the updater adds no gradient noise, while the run's budget still
    records the noise that was asked for (so the reported epsilon is false)."""
    honest_step = updater.step

    def step(batch, clip, noise, prune=0.0, **kwargs):
        report = honest_step(batch, clip, 0.0, prune, **kwargs)
        claimed = np.broadcast_to(np.asarray(noise, float), (len(report.group_names),))
        return dataclasses.replace(report, noise=claimed.copy())

    updater.step = step


def one_run_audit(config: EnvConfig, policy=None, n_canaries: int = 256, confidence: float = 0.95,
                  seed: int = 0, broken: str | None = None, clip: float = 0.5) -> AuditResult:
    """Audit ``config`` (a text-task environment) driven by ``policy`` in one training run.

    Args:
        config: the environment configuration under audit (its task must be ``text``).
        policy: anything with SB3's ``predict``, or ``None`` for plain DP-SGD (clip ``clip``, noise
            calibrated to the budget). ``policy(env)`` is called first when it is a factory.
        n_canaries: ``m``, audit canaries, each in the training split with probability 1/2.
        confidence: of the lower bound.
        seed: the coins, the canaries and the episode.
        broken: ``None`` or ``"no_noise"`` (a deliberately broken configuration, see module doc).
    """
    from dp_gym.envs.dp_finetune_env import DPFineTuneEnv

    if broken is not None and broken not in BROKEN_MODES:
        raise ValueError(f"broken must be None or one of {list(BROKEN_MODES)}, got {broken!r}")
    if config.task != "text":
        raise ValueError(f"the one-run audit inserts text canaries; task must be 'text', got {config.task!r}")
    from dp_gym.tasks.text import TextTask

    kwargs = dict(config.task_kwargs)
    if "train_records" in kwargs or kwargs.get("n_canaries"):
        raise ValueError("the audit builds the training split itself; remove train_records / n_canaries")
    template = TextTask(**{**kwargs, "n_train": 1})  # its tokenizer (and the private notes' seed)
    texts = random_token_canaries(template.tokenizer, n_canaries, seed=10_000 + seed)
    included = np.random.default_rng(seed).random(n_canaries) < 0.5
    records = private_train_records(kwargs.get("n_train", 512), seed=1000 + template.seed)
    records += [text for text, keep in zip(texts, included, strict=True) if keep]
    np.random.default_rng(seed + 1).shuffle(records)
    audited = EnvConfig.from_dict({**config.to_dict(), "task_kwargs": {**kwargs, "train_records": records}})
    env = DPFineTuneEnv(audited)
    if broken == "no_noise":
        _break_every_episode(env.run)
    if policy is None:
        policy = _PlainDPSGD(env, clip)
    elif not hasattr(policy, "predict"):
        policy = policy(env)
    result = run_episode(policy, env, seed, "one-run audit")
    tokenizer = env.task.tokenizer
    reference = env.task.build_model()
    scores = record_losses(reference, tokenizer, texts) - record_losses(env.run.model, tokenizer, texts)
    bound, r, v, k = audit_bound_from_scores(scores, included, config.delta, confidence)
    env.close()
    return AuditResult(
        epsilon_lower_bound=bound, epsilon_reported=result.privacy.epsilon, delta=config.delta,
        confidence=confidence, canaries=n_canaries, included=int(included.sum()), guesses=r, correct=v, k=k,
        broken=broken, privacy_valid=result.privacy_valid and broken is None, updates=result.updates,
        val_ppl=result.final_val_ppl,
    )


class _PlainDPSGD:
    """Plain DP-SGD at one clip with the calibrated noise (the audit's default controller)."""

    def __init__(self, env, clip: float):
        self.env, self.clip = env, clip

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return self.env.encode_action(clip=self.clip, noise=self.env.calibrated_group_noise(), prune=0.0), state


def _break_every_episode(run) -> None:
    """Apply the broken configuration to the updater that every reset of ``run`` makes."""
    honest_reset = run.reset

    def reset(*args, **kwargs):
        honest_reset(*args, **kwargs)
        _drop_gradient_noise(run.updater)

    run.reset = reset
