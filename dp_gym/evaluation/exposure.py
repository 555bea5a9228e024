"""Canary exposure (Carlini et al. 2019, "The Secret Sharer").

A canary is a record ``template.format(secret=s*)`` with ``s*`` drawn uniformly from a secret
space ``R`` (``|R| = 10^digits``). Rank every candidate ``s`` in ``R`` by the model's
log-likelihood of ``template.format(secret=s)``; the exposure of ``s*`` is

.. math:: \\mathrm{exposure}(s^*) = \\log_2 |R| - \\log_2 \\mathrm{rank}(s^*),

where rank 1 is the most likely. A model that never saw the canary ranks ``s*`` uniformly at
random, so its expected exposure is about ``log2(e) = 1.44`` bits; a model that memorized it
gives ``log2 |R|``.

When ``|R|`` is too large to enumerate, ``n`` candidates are sampled uniformly from
``R \\ {s*}`` and the rank in ``R`` is estimated from the sampled fraction that beat ``s*``:

.. math:: \\widehat{\\mathrm{exposure}} = -\\log_2 \\frac{1 + \\#\\{s : \\ell(s) > \\ell(s^*)\\}}{n + 1},

which is the exact formula when the ``n`` candidates are all of ``R \\ {s*}``, and is capped at
``log2(n + 1)`` when sampled (``sampled`` and ``max_exposure`` say so in the result).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import nn

from dp_gym.data.clinical_notes import Canary
from dp_gym.evaluation.scoring import record_log_likelihoods


@dataclass(frozen=True)
class ExposureResult:
    text: str
    exposure: float  # bits
    rank: int  # among the n + 1 scored secrets
    candidates: int  # n: other secrets scored
    space_size: int
    sampled: bool
    max_exposure: float  # the largest exposure this estimate can report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _candidate_secrets(canary: Canary, n_candidates: int | None, rng: np.random.Generator) -> tuple[list[str], bool]:
    space = canary.secret_space_size
    true_value = int(canary.secret)
    if n_candidates is None or n_candidates >= space - 1:
        values = [v for v in range(space) if v != true_value]
        sampled = False
    else:
        values = []
        seen = {true_value}
        while len(values) < n_candidates:  # uniform without replacement from the space minus s*
            for v in rng.integers(0, space, size=2 * (n_candidates - len(values))).tolist():
                if v not in seen:
                    seen.add(v)
                    values.append(v)
                    if len(values) == n_candidates:
                        break
        sampled = True
    return [f"{v:0{canary.n_digits}d}" for v in values], sampled


def canary_exposure(model: nn.Module, tokenizer, canary: Canary, n_candidates: int | None = 999, seed: int = 0,
                    batch_size: int = 128) -> ExposureResult:
    """Exposure of one canary in bits. ``n_candidates=None`` enumerates the whole space."""
    rng = np.random.default_rng(seed)
    secrets, sampled = _candidate_secrets(canary, n_candidates, rng)
    texts = [canary.text] + [canary.template.format(secret=s) for s in secrets]
    log_likelihood, _ = record_log_likelihoods(model, tokenizer, texts, batch_size=batch_size)
    better = int(np.sum(log_likelihood[1:] > log_likelihood[0]))
    n = len(secrets)
    exposure = math.log2(n + 1) - math.log2(better + 1)
    return ExposureResult(text=canary.text, exposure=exposure, rank=better + 1, candidates=n,
                          space_size=canary.secret_space_size, sampled=sampled, max_exposure=math.log2(n + 1))


def canary_exposures(model: nn.Module, tokenizer, canaries: list[Canary], n_candidates: int | None = 999,
                     seed: int = 0) -> list[ExposureResult]:
    return [canary_exposure(model, tokenizer, c, n_candidates, seed=seed + i) for i, c in enumerate(canaries)]
