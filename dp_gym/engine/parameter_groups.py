"""Partition a model's trainable parameters into named groups, each clipped and noised alone."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

STRATEGIES = ("per_block", "per_layer", "per_adapter", "global")

# ``transformer.h.3.``, ``model.layers.3.``, ``encoder.layer.3.``, ``blocks.3.``
_BLOCK_PATTERN = re.compile(r"^(.*?\b(?:h|layers|layer|blocks|block)\.\d+)\.")
_EMBEDDING_PATTERN = re.compile(r"(wte|wpe|embed|tok_emb|pos_emb)", re.IGNORECASE)
_PROJECTOR_PATTERN = re.compile(r"(multi_modal_projector|projector|mm_projector)")
# ``...attn.c_attn.lora_A.default.weight`` -> ``...attn.c_attn`` (peft's adapter parameter names)
_ADAPTER_PATTERN = re.compile(r"^(.*?)\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\b")


def _per_adapter_name(parameter_name: str) -> str:
    adapter = _ADAPTER_PATTERN.match(parameter_name)
    return adapter.group(1) if adapter else _per_block_name(parameter_name)


def _per_block_name(parameter_name: str) -> str:
    if _PROJECTOR_PATTERN.search(parameter_name):
        return "projector"
    block = _BLOCK_PATTERN.match(parameter_name)
    if block:
        return block.group(1)
    if _EMBEDDING_PATTERN.search(parameter_name):
        return "embeddings"
    return "head"


class ParameterGroups:
    """Trainable parameters of ``model`` split into named groups.

    Every trainable parameter is in exactly one group; frozen parameters are in none; shared
    (tied) parameters appear once, under the first name ``named_parameters`` gives them.

    Args:
        model: the model.
        strategy: ``"per_block"`` (embeddings, each transformer block, and the rest: final norm
            and head; a multimodal projector is its own group), ``"per_layer"`` (each parameter
            tensor), ``"per_adapter"`` (each LoRA-adapted layer, its ``A`` and ``B`` together, as
            RLDP does; any other trainable parameter goes by ``per_block``), ``"global"`` (one
            group), or regex patterns: a sequence of patterns (the pattern is the group name) or a
            mapping ``name -> pattern``. With patterns, a
            parameter joins the first group whose pattern it matches (``re.search``).

    Raises:
        ValueError: for an unknown strategy, a pattern that matches no parameter, a trainable
            parameter that no pattern matches, or a model with no trainable parameter.
    """

    def __init__(self, model: nn.Module, strategy: str | Sequence[str] | Mapping[str, str] = "per_block"):
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameter to group")
        assignment = self._assign(named, strategy)
        self._groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for (name, parameter), group in zip(named, assignment, strict=True):
            self._groups.setdefault(group, []).append((name, parameter))
        self.strategy = strategy

    @staticmethod
    def _assign(named: list[tuple[str, nn.Parameter]], strategy) -> list[str]:
        names = [name for name, _ in named]
        if isinstance(strategy, str):
            if strategy == "per_block":
                return [_per_block_name(name) for name in names]
            if strategy == "per_layer":
                return names
            if strategy == "per_adapter":
                return [_per_adapter_name(name) for name in names]
            if strategy == "global":
                return ["all"] * len(names)
            raise ValueError(f"grouping strategy must be one of {STRATEGIES} or regex patterns, got {strategy!r}")
        patterns = dict(strategy) if isinstance(strategy, Mapping) else {p: p for p in strategy}
        if not patterns:
            raise ValueError("grouping patterns must not be empty")
        compiled = {}
        for group, pattern in patterns.items():
            try:
                compiled[group] = re.compile(pattern)
            except re.error as error:
                raise ValueError(f"grouping pattern {pattern!r} is not a valid regex: {error}") from None
        assignment = []
        for name in names:
            group = next((g for g, regex in compiled.items() if regex.search(name)), None)
            if group is None:
                raise ValueError(f"trainable parameter {name!r} matches none of the grouping patterns {list(patterns.values())}")
            assignment.append(group)
        unused = [pattern for group, pattern in patterns.items() if group not in assignment]
        if unused:
            raise ValueError(f"grouping patterns {unused} match no trainable parameter")
        return assignment

    @property
    def names(self) -> list[str]:
        return list(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def parameters(self, group: str) -> list[nn.Parameter]:
        return [parameter for _, parameter in self._groups[group]]

    def parameter_names(self, group: str) -> list[str]:
        return [name for name, _ in self._groups[group]]

    def numel(self, group: str) -> int:
        return sum(parameter.numel() for parameter in self.parameters(group))

    def all_parameters(self) -> list[nn.Parameter]:
        return [parameter for group in self._groups.values() for _, parameter in group]

    def flat(self, group: str, tensors: Mapping[nn.Parameter, torch.Tensor] | None = None) -> torch.Tensor:
        """The group's parameters (or the given per-parameter tensors) as one flat vector."""
        source = self.parameters(group)
        return torch.cat([(tensors[p] if tensors is not None else p.detach()).reshape(-1) for p in source])

    def nonfinite_parameters(self) -> list[str]:
        """Names of grouped parameters holding a NaN or an inf (empty when all are finite).

        One fused ``max |w|`` per tensor (``torch._foreach_max``; NaN propagates, and unlike a
        norm it cannot overflow on finite weights): a sixth of the time of a check per tensor, and
        it runs after every update.
        """
        named = [(name, parameter.detach()) for group in self._groups.values() for name, parameter in group
                 if parameter.numel() > 0]
        if not named:
            return []
        tensors = [tensor for _, tensor in named]
        if hasattr(torch, "_foreach_max"):  # torch >= 2.6
            peaks = torch.stack([peak.float() for peak in torch._foreach_max(torch._foreach_abs(tensors))])
        else:
            peaks = torch.stack([tensor.abs().max().float() for tensor in tensors])
        bad = (~torch.isfinite(peaks)).nonzero().flatten().tolist()
        return [named[index][0] for index in bad]

    def describe(self) -> list[tuple[str, int, int]]:
        """``(name, tensors, numel)`` per group."""
        return [(g, len(self._groups[g]), self.numel(g)) for g in self._groups]
