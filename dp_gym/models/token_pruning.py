"""Visual-token pruning: keep ``ceil(keep_ratio * n)`` of an image's ``n`` patch tokens.

Dual-Priv Pruning's first mechanism. Each rule is a function of one example's *own* visual
tokens (and, for ``cls_attention``, of its own [CLS] attention), applied to every example of a
batch independently. Pruning is therefore part of the per-example computation that DP-SGD
clips: replacing one example changes only that example's pruned tokens, the sensitivity
argument is unchanged, and pruning costs no privacy.

The kept tokens stay in their original (raster) order and are *removed*, not masked, so the
language model sees ``k`` instead of ``n`` visual tokens: its time and memory fall.

Rules (register more with :func:`register_rule`):

* ``cls_attention``: the ``k`` patches with the largest attention from [CLS] in the last vision
  layer (averaged over heads): ``score_j = mean_h softmax(q_cls k_j / sqrt(d))``.
* ``dissimilarity``: greedy farthest-point selection under cosine similarity: start from the patch
  least similar to the image's mean patch, then repeatedly add the patch whose largest similarity
  to the kept set is smallest. Redundant background patches are kept once, distinct ones all.
* ``random``: ``k`` patches uniformly at random (a control; the draw is independent of the data).
* ``none``: keep every patch (``keep_ratio`` must then be 1).
* ``cls_attention_fuse`` (Dual-Priv's full rule, a *fusing* rule: it returns tokens, not indices):
  of the ``k`` output tokens, ``k - m`` are the top patches by [CLS] attention and ``m = max(1,
  floor(k / 4))`` (0 when ``k = n``) are fused: the next ``m`` patches by attention are centres,
  every remaining patch joins the centre it is most cosine-similar to, and each cluster becomes
  ``centre + mean(members)`` (the centre alone for a cluster without members).

  Privacy: a fused token is a function of one example's own patches, so fusing is part of the
  per-example computation that DP-SGD clips and needs no noise of its own. (The paper adds
  heuristic noise to fused tokens; as one of its reviewers noted, that noise does not make the
  mechanism DP, and it is not needed here: the clipped, noised gradient is what is released.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dp_gym.utils.registry import Registry

#: rule(features (B, n, D), cls_attention (B, n), k, generator) -> kept indices (B, k)
Rule = Callable[[torch.Tensor, torch.Tensor | None, int, torch.Generator | None], torch.Tensor]


RULES: Registry[Rule] = Registry("token-pruning rule", callable_only=True)


#: fusing rule(features (B, n, D), cls_attention (B, n), k) -> tokens (B, k, D)
FusingRule = Callable[[torch.Tensor, torch.Tensor | None, int], torch.Tensor]
FUSING_RULES: Registry[FusingRule] = Registry("token-fusing rule", callable_only=True)
#: rules that read the [CLS] attention of the last vision layer
NEEDS_CLS_ATTENTION = {"cls_attention", "cls_attention_fuse"}


def register_rule(name: str, rule: Rule, force: bool = False) -> None:
    """Register ``rule`` under ``name``. It must treat every example of the batch on its own."""
    RULES.register(name, rule, force=force)


def register_fusing_rule(name: str, rule: FusingRule, force: bool = False) -> None:
    """Register a rule that returns ``k`` tokens per example (not indices); per example, like every rule."""
    FUSING_RULES.register(name, rule, force=force)


def registered_rules() -> list[str]:
    return sorted({*RULES.names(), *FUSING_RULES.names()})


def needs_cls_attention(rule: str) -> bool:
    return rule in NEEDS_CLS_ATTENTION


def tokens_kept(n: int, keep_ratio: float) -> int:
    """``ceil(keep_ratio * n)``, at least 1."""
    check_keep_ratio(keep_ratio)
    return max(1, math.ceil(keep_ratio * n - 1e-9))


def check_keep_ratio(keep_ratio: float, field: str = "keep_ratio") -> float:
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)):
        raise ValueError(f"{field} must be a number in (0, 1], got {keep_ratio!r}")
    if not math.isfinite(keep_ratio) or not (0 < keep_ratio <= 1):
        raise ValueError(f"{field} must be in (0, 1], got {keep_ratio!r}")
    return float(keep_ratio)


def check_rule(rule: str, field: str = "rule") -> str:
    """``rule`` when it is registered or imports (``"module:function"``); else a ValueError naming ``field``."""
    if rule in FUSING_RULES.names():
        return rule
    try:
        RULES.get(rule)
    except ValueError:
        raise ValueError(f"{field} must be one of {registered_rules()} or 'module:function', got {rule!r}") from None
    return rule


def _keep_all(features, cls_attention, k, generator):
    size, n, _ = features.shape
    if k != n:
        raise ValueError(f"rule 'none' keeps every token; keep_ratio must be 1 (asked for {k} of {n})")
    return torch.arange(n, device=features.device).expand(size, n)


def _top_cls_attention(features, cls_attention, k, generator):
    if cls_attention is None:
        raise ValueError("rule 'cls_attention' needs the [CLS] attention of the last vision layer")
    return cls_attention.topk(k, dim=1).indices


def _random(features, cls_attention, k, generator):
    size, n, _ = features.shape
    scores = torch.rand(size, n, generator=generator).to(features.device)
    return scores.topk(k, dim=1).indices


def _dissimilar(features, cls_attention, k, generator):
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    similarity = unit @ unit.transpose(1, 2)  # (B, n, n), one matrix per example
    size, n, _ = features.shape
    rows = torch.arange(size, device=features.device)
    mean_similarity = similarity.mean(dim=2)
    first = mean_similarity.argmin(dim=1)
    kept = [first]
    closest = similarity[rows, first].clone()  # largest similarity of each patch to the kept set
    closest[rows, first] = math.inf
    for _ in range(k - 1):
        chosen = closest.argmin(dim=1)
        kept.append(chosen)
        closest = torch.maximum(closest, similarity[rows, chosen])
        closest[rows, chosen] = math.inf
    return torch.stack(kept, dim=1)


def _fuse_by_cls_attention(features, cls_attention, k):
    if cls_attention is None:
        raise ValueError("rule 'cls_attention_fuse' needs the [CLS] attention of the last vision layer")
    size, n, dim = features.shape
    fused = 0 if k >= n else max(1, k // 4)
    order = cls_attention.argsort(dim=1, descending=True, stable=True)

    def take(indices):
        return features.gather(1, indices.unsqueeze(-1).expand(-1, -1, dim))

    kept = take(order[:, : k - fused].sort(dim=1).values)
    if fused == 0:
        return kept
    centre_indices = order[:, k - fused : k].sort(dim=1).values  # raster order of the centres
    centres, rest = take(centre_indices), take(order[:, k:])
    similarity = F.normalize(rest.float(), dim=-1) @ F.normalize(centres.float(), dim=-1).transpose(1, 2)
    members = F.one_hot(similarity.argmax(dim=2), fused).to(features.dtype)  # (B, n - k, m)
    sums = members.transpose(1, 2) @ rest  # (B, m, D)
    counts = members.sum(dim=1).clamp(min=1).unsqueeze(-1)
    return torch.cat([kept, centres + sums / counts], dim=1)


register_rule("none", _keep_all)
register_rule("cls_attention", _top_cls_attention)
register_rule("dissimilarity", _dissimilar)
register_rule("random", _random)
register_fusing_rule("cls_attention_fuse", _fuse_by_cls_attention)


def select_visual_tokens(
    features: torch.Tensor,
    rule: str,
    keep_ratio: float,
    cls_attention: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices ``(B, k)`` of the kept patches of each example, ascending (raster order).

    Args:
        features: ``(B, n, D)`` patch features (without [CLS]).
        rule: a registered rule name.
        keep_ratio: in (0, 1]; ``k = ceil(keep_ratio * n)``.
        cls_attention: ``(B, n)`` attention of [CLS] to each patch (for ``cls_attention``).
        generator: randomness of the ``random`` rule.
    """
    check_rule(rule)
    if rule in FUSING_RULES.names():
        raise ValueError(f"rule {rule!r} fuses tokens and selects no indices: use prune_visual_tokens")
    k = tokens_kept(features.shape[1], keep_ratio)
    indices = RULES.get(rule)(features, cls_attention, k, generator)
    if indices.shape != (features.shape[0], k):
        raise RuntimeError(f"rule {rule!r} returned indices of shape {tuple(indices.shape)}, expected {(features.shape[0], k)}")
    return indices.sort(dim=1).values


def prune_visual_tokens(
    features: torch.Tensor,
    rule: str,
    keep_ratio: float,
    cls_attention: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The kept (or, for a fusing rule, fused) patch features ``(B, k, D)`` (see :func:`select_visual_tokens`)."""
    if rule in FUSING_RULES.names():
        k = tokens_kept(features.shape[1], keep_ratio)
        tokens = FUSING_RULES.get(rule)(features, cls_attention, k)
        if tokens.shape != (features.shape[0], k, features.shape[2]):
            raise RuntimeError(f"rule {rule!r} returned tokens of shape {tuple(tokens.shape)}, expected "
                               f"{(features.shape[0], k, features.shape[2])}")
        return tokens
    indices = select_visual_tokens(features, rule, keep_ratio, cls_attention, generator)
    return features.gather(1, indices.unsqueeze(-1).expand(-1, -1, features.shape[-1]))


def cls_attention_scores(last_layer_attention: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` head-averaged attention of [CLS] (token 0) to the patches (tokens 1..n), from
    the last vision layer's ``(B, heads, n + 1, n + 1)`` attention probabilities."""
    return last_layer_attention[:, :, 0, 1:].mean(dim=1)
