"""Per-sample gradient rules for layers Opacus has no registered sampler for.

Opacus falls back to functorch (one vmap per layer) for unknown layer types; GPT-2's
``transformers.pytorch_utils.Conv1D`` is such a type. Its forward is ``y = x W + b`` with
``W`` of shape ``(in, out)`` (a transposed ``nn.Linear``), so the exact per-sample gradient is
``grad W_i = sum_t a_{i,t}^T b_{i,t}`` and ``grad b_i = sum_t b_{i,t}``: an einsum, like Opacus'
own ``nn.Linear`` rule. Registering it through Opacus' registry keeps everything else stock.

Opacus' ``nn.Embedding`` rule (1.6) scatters every position's output gradient into the table,
including positions whose id is the layer's ``padding_idx``; autograd gives that row no gradient
(Llama's ``embed_tokens`` has ``padding_idx = pad_token_id``). The per-sample norms, and so the
clipping, were then those of a gradient the model never has. The rule registered here is Opacus'
with that row zeroed afterwards.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.embedding import compute_embedding_grad_sample
from opacus.grad_sample.utils import register_grad_sampler
from torch import nn


def _compute_conv1d_grad_sample(layer, activations: list[torch.Tensor], backprops: torch.Tensor):
    activation = activations[0].to(backprops.dtype)
    samples = {}
    if layer.weight.requires_grad:
        samples[layer.weight] = torch.einsum("n...i,n...j->nij", activation, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        samples[layer.bias] = torch.einsum("n...k->nk", backprops)
    return samples


def _compute_embedding_grad_sample(layer: nn.Embedding, activations: list[torch.Tensor], backprops: torch.Tensor):
    samples = compute_embedding_grad_sample(layer, activations, backprops)
    if layer.padding_idx is not None and layer.weight in samples:
        samples[layer.weight][:, layer.padding_idx] = 0
    return samples


def register_transformers_grad_samplers() -> None:
    """Register the Conv1D rule and the padding-aware embedding rule once (idempotent)."""
    if GradSampleModule.GRAD_SAMPLERS.get(nn.Embedding) is not _compute_embedding_grad_sample:
        register_grad_sampler(nn.Embedding)(_compute_embedding_grad_sample)
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        return
    if Conv1D not in GradSampleModule.GRAD_SAMPLERS:
        register_grad_sampler(Conv1D)(_compute_conv1d_grad_sample)
