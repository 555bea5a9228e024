"""Per-sample gradient rules for layers Opacus has no registered sampler for.

Opacus falls back to functorch (one vmap per layer) for unknown layer types; GPT-2's
``transformers.pytorch_utils.Conv1D`` is such a type. Its forward is ``y = x W + b`` with
``W`` of shape ``(in, out)`` (a transposed ``nn.Linear``), so the exact per-sample gradient is
``grad W_i = sum_t a_{i,t}^T b_{i,t}`` and ``grad b_i = sum_t b_{i,t}``: an einsum, like Opacus'
own ``nn.Linear`` rule. Registering it through Opacus' registry keeps everything else stock.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.utils import register_grad_sampler


def _compute_conv1d_grad_sample(layer, activations: list[torch.Tensor], backprops: torch.Tensor):
    activation = activations[0].to(backprops.dtype)
    samples = {}
    if layer.weight.requires_grad:
        samples[layer.weight] = torch.einsum("n...i,n...j->nij", activation, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        samples[layer.bias] = torch.einsum("n...k->nk", backprops)
    return samples


def register_transformers_grad_samplers() -> None:
    """Register the Conv1D rule once (idempotent)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        return
    if Conv1D not in GradSampleModule.GRAD_SAMPLERS:
        register_grad_sampler(Conv1D)(_compute_conv1d_grad_sample)
