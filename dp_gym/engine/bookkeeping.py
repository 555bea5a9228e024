"""Per-sample gradient norms and clipped sums of linear layers without per-sample gradients.

Opacus' ``GradSampleModule`` materializes every per-sample gradient (``B x numel`` per
parameter) and then clips it. For a linear layer ``y_t = W a_t + b`` (``nn.Linear``, or GPT-2's
``Conv1D``, which stores ``W^T``) applied to the ``T`` positions of example ``i``, both things the
DP update needs can be had from the layer's inputs ``A_i`` (``T x d_in``) and output gradients
``G_i`` (``T x d_out``) alone ("book-keeping", Bu et al. 2023; "ghost" norms, Li et al. 2021):

* squared norm: ``||grad W_i||_F^2 = ||G_i^T A_i||_F^2 = sum_{s,t} (a_s . a_t)(g_s . g_t)
  = <A_i A_i^T, G_i G_i^T>_F``, which costs ``O(T^2 (d_in + d_out))`` instead of
  ``O(T d_in d_out)`` and never holds a ``d_out x d_in`` matrix per example;
  ``||grad b_i||^2 = ||sum_t g_t||^2``;
* clipped sum with per-example factors ``c_i``: ``sum_i c_i G_i^T A_i = (c G)^T A`` over all
  ``B T`` rows: one matrix product.

Why this is written here: Opacus' own ghost clipping
(``GradSampleModuleFastGradientClipping``) computes the norms the same way but clips with *one*
threshold for all parameters, through a second backward pass of the re-weighted loss. dp-gym clips
every parameter group with its own ``C_g``, so the factor ``c_{i,g}`` differs by group and no single
loss re-weighting produces the clipped sums. Keeping ``A`` and ``G`` (book-keeping) gives them
with no second backward.

Which way per weight (:func:`use_ghost_norm`): the ghost way costs ``B T^2 (d_in + d_out)`` extra
multiply-adds (the two Gram matrices; the clipped sum costs what forming the per-sample gradients
costs), the materialized way writes and reads ``B d_in d_out`` floats twice more (norm, then the
weighted sum). The ghost way is taken when ``T^2 (d_in + d_out) <= 8 d_in d_out``: large output
layers over few positions (a vocabulary head), where the ``B x V x d`` per-sample tensor is what
costs. Otherwise the per-sample gradient is formed in the backward pass (one batched product,
the input released right away) and kept for the sum, as Opacus' hooks would; only its hook
(a tensor hook on the layer's output, cheaper than a full module backward hook) differs.

Everything else (layer norms, embeddings, layers whose weights are shared with another module,
any layer type Opacus knows) stays with Opacus' hooks and per-sample gradients, untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from opacus.grad_sample import GradSampleModule
from torch import nn


def _linear_types() -> tuple[type[nn.Module], ...]:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


#: a gradient without per-sample information would silently train that parameter on noise alone
USED_OUTSIDE_ITS_MODULE = (
    "a parameter of shape {shape} has a gradient but no per-sample gradient: it was used outside "
    "the module that owns it (e.g. F.linear(x, other_module.weight)); per-sample hooks only see "
    "module calls, so call the module or tie the weight to a module that is called")

#: ghost norm when ``T^2 (d_in + d_out) <= GHOST_COST_RATIO * d_in * d_out`` (measured on CPU:
#: at 8 the vocabulary head of the tiny models goes ghost, their d x 4d MLP layers do not)
GHOST_COST_RATIO = 8


def use_ghost_norm(positions: int, d_in: int, d_out: int) -> bool:
    """Whether the Gram-matrix ("ghost") norm is the cheaper way for a weight (see the module doc)."""
    return positions * positions * (d_in + d_out) <= GHOST_COST_RATIO * d_in * d_out


@dataclass
class _BookkeptLayer:
    """Per-sample gradient information of one linear layer over one forward and backward pass.

    The forward hook keeps each call's input; the output-gradient hook then either keeps the
    pair ``(A, G)`` (ghost way: one call, :func:`use_ghost_norm`) or forms the per-sample
    gradient at once and lets the input go, as Opacus' hooks do. A layer called several times in
    one forward pass is always materialized, each call's per-sample gradient added to the last:
    the norm of a *sum* of per-call gradients has cross terms the ghost way would have to carry.
    """

    module: nn.Module
    weight_is_out_by_in: bool  # nn.Linear stores (d_out, d_in); Conv1D stores (d_in, d_out)
    inputs: list[torch.Tensor | None] = field(default_factory=list)  # None once its backward arrived
    ghost: tuple[torch.Tensor, torch.Tensor] | None = None  # (A (B, T, d_in), G (B, T, d_out))
    weight_samples: torch.Tensor | None = None  # (B, *weight.shape) when materialized
    bias_samples: torch.Tensor | None = None  # (B, d_out): sum_t g_{i,t}

    def clear(self) -> None:
        self.inputs.clear()
        self.ghost = self.weight_samples = self.bias_samples = None

    def on_forward(self, activation: torch.Tensor) -> int:
        self.inputs.append(activation.detach())
        return len(self.inputs) - 1

    def on_backward(self, slot: int, grad: torch.Tensor) -> None:
        activation, self.inputs[slot] = self.inputs[slot], None
        if activation.shape[0] != grad.shape[0]:
            raise RuntimeError(f"a linear layer's input has batch dimension {activation.shape[0]} but its output "
                               f"gradient {grad.shape[0]}")
        size = activation.shape[0]
        inputs = activation.reshape(size, -1, activation.shape[-1])
        grads = grad.detach().reshape(size, -1, grad.shape[-1]).to(inputs.dtype)
        module = self.module
        if module.bias is not None and module.bias.requires_grad:
            self.bias_samples = _accumulate(self.bias_samples, grads.sum(dim=1))
        if not module.weight.requires_grad:
            return
        if len(self.inputs) == 1 and use_ghost_norm(inputs.shape[1], inputs.shape[2], grads.shape[2]):
            self.ghost = (inputs, grads)
            return
        # contiguous in the weight's own layout, so the flat views below are free
        if self.weight_is_out_by_in:
            samples = torch.bmm(grads.transpose(1, 2), inputs)  # (B, d_out, d_in)
        else:
            samples = torch.bmm(inputs.transpose(1, 2), grads)  # (B, d_in, d_out)
        self.weight_samples = _accumulate(self.weight_samples, samples)

    def _check(self, size: int) -> None:
        # a call whose output did not reach the loss got no gradient: it contributes zero
        for tensor in (self.bias_samples, self.weight_samples, None if self.ghost is None else self.ghost[0]):
            if tensor is not None and tensor.shape[0] != size:
                raise RuntimeError(
                    f"a linear layer saw batch dimension {tensor.shape[0]} != {size}; a module saw a broadcast "
                    "input (e.g. GPT-2 position_ids of shape (1, T): pass them expanded, Opacus #841)")

    def squared_norms(self, parameter: nn.Parameter, size: int) -> torch.Tensor:
        """``(B,)`` squared norms of the per-sample gradients of ``parameter``."""
        self._check(size)
        if parameter is self.module.weight and self.ghost is not None:
            inputs, grads = self.ghost
            gram_inputs = torch.bmm(inputs, inputs.transpose(1, 2))
            gram_grads = torch.bmm(grads, grads.transpose(1, 2))
            return (gram_inputs * gram_grads).sum(dim=(1, 2)).clamp(min=0)
        samples = self.weight_samples if parameter is self.module.weight else self.bias_samples
        if samples is None:
            return torch.zeros(size)
        return torch.linalg.vector_norm(samples.reshape(size, -1), dim=1) ** 2

    def weighted_sum(self, parameter: nn.Parameter, factors: torch.Tensor, size: int,
                     drop: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_i c_i grad_i`` of ``parameter``, flat; samples where ``drop`` is true contribute 0.

        Zeroing a dropped sample's rows (rather than multiplying by ``c_i = 0``) keeps a NaN/inf
        of that sample out of the sum. What was kept for ``parameter`` is released.
        """
        self._check(size)
        if parameter is self.module.weight and self.ghost is not None:
            (inputs, grads), self.ghost = self.ghost, None
            factors = factors.to(inputs.dtype)
            if drop is not None:
                keep = ~drop.view(size, 1, 1)
                inputs = torch.where(keep, inputs, torch.zeros((), dtype=inputs.dtype))
                grads = torch.where(keep, grads, torch.zeros((), dtype=grads.dtype))
            d_in, d_out = inputs.shape[2], grads.shape[2]
            # scale the narrower side by c_i, then one product over all B*T rows
            if d_in <= d_out:
                inputs = inputs * factors.view(size, 1, 1)
            else:
                grads = grads * factors.view(size, 1, 1)
            if self.weight_is_out_by_in:
                total = grads.reshape(-1, d_out).t() @ inputs.reshape(-1, d_in)
            else:
                total = inputs.reshape(-1, d_in).t() @ grads.reshape(-1, d_out)
            return total.reshape(-1)
        if parameter is self.module.weight:
            samples, self.weight_samples = self.weight_samples, None
        else:
            samples, self.bias_samples = self.bias_samples, None
        if samples is None:
            return torch.zeros(parameter.numel(), dtype=parameter.dtype)
        return weighted_sample_sum(samples, factors, size, drop)

    def has_samples(self, parameter: nn.Parameter) -> bool:
        """Whether a backward pass through this layer left per-sample information for ``parameter``."""
        if parameter is self.module.weight:
            return self.ghost is not None or self.weight_samples is not None
        return self.bias_samples is not None


def weighted_sample_sum(samples: torch.Tensor, factors: torch.Tensor, size: int,
                        drop: torch.Tensor | None = None) -> torch.Tensor:
    """Flat ``sum_i c_i g_i`` of materialized per-sample gradients ``(B, ...)``; rows in ``drop`` give 0.

    One gemv on the transposed ``(B, numel)`` view: no ``B x numel`` temporary. A dropped row is
    zeroed (not multiplied by ``c_i = 0``), so its NaN/inf stays out of the sum.
    """
    samples = samples.reshape(size, -1)
    if drop is not None:
        samples = torch.where(drop.unsqueeze(1), torch.zeros((), dtype=samples.dtype), samples)
    return torch.mv(samples.t(), factors.to(samples.dtype))


def _accumulate(total: torch.Tensor | None, part: torch.Tensor) -> torch.Tensor:
    return part if total is None else total + part


class BookkeepingGradSampleModule(GradSampleModule):
    """Opacus' ``GradSampleModule`` whose linear layers are book-kept instead of sampled.

    A ``nn.Linear`` / ``Conv1D`` is book-kept when Opacus would hook it and none of its trainable
    parameters belongs to another module as well (a tied weight needs the norm of the *sum* of its
    per-sample gradients, so it stays with Opacus). Book-kept parameters get no ``grad_sample``;
    ask :meth:`squared_norms` and :meth:`weighted_sum` instead. The plain ``.grad`` of every
    parameter is still the ordinary batch gradient.
    """

    def __init__(self, module: nn.Module, *, batch_first: bool = True, loss_reduction: str = "sum", **kwargs):
        if not batch_first or loss_reduction != "sum":
            raise ValueError("book-keeping supports batch_first=True and loss_reduction='sum' only")
        owners: dict[int, int] = {}
        for sub in module.modules():
            for parameter in sub.parameters(recurse=False):
                owners[id(parameter)] = owners.get(id(parameter), 0) + 1
        linear = _linear_types()
        object.__setattr__(self, "_bookkept_layers", {})
        # the modules Opacus would hook (it does not descend into layers it samples with functorch)
        hooked = list(GradSampleModule.iterate_submodules(self, module))
        layers: dict[nn.Module, _BookkeptLayer] = {}
        for sub in hooked:
            trainable = [p for p in sub.parameters(recurse=False) if p.requires_grad]
            if type(sub) in linear and trainable and all(owners[id(p)] == 1 for p in trainable):
                layers[sub] = _BookkeptLayer(sub, weight_is_out_by_in=isinstance(sub, nn.Linear))
        object.__setattr__(self, "_bookkept_layers", layers)
        super().__init__(module, batch_first=batch_first, loss_reduction=loss_reduction, **kwargs)
        self._bookkept_by_parameter = {
            id(p): layer for layer in layers.values() for p in layer.module.parameters(recurse=False) if p.requires_grad
        }
        self._bookkeeping_hooks = [layer.module.register_forward_hook(self._capture) for layer in layers.values()]

    def iterate_submodules(self, module: nn.Module):
        for sub in super().iterate_submodules(module):
            if sub not in self._bookkept_layers:
                yield sub

    def _capture(self, module: nn.Module, inputs, output) -> None:
        if not (self.hooks_enabled and module.training and torch.is_grad_enabled()):
            return
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        layer = self._bookkept_layers[module]
        slot = layer.on_forward(inputs[0])
        output.register_hook(lambda grad: layer.on_backward(slot, grad))

    # ------------------------------------------------------------------ the updater's interface
    def is_bookkept(self, parameter: nn.Parameter) -> bool:
        return id(parameter) in self._bookkept_by_parameter

    @property
    def bookkept_modules(self) -> list[nn.Module]:
        return list(self._bookkept_layers)

    def squared_norms(self, parameter: nn.Parameter, size: int) -> torch.Tensor:
        """``(B,)`` ``||grad_i||^2`` of a book-kept parameter after one forward and backward."""
        layer = self._bookkept_by_parameter[id(parameter)]
        if not layer.has_samples(parameter) and parameter.grad is not None:
            raise RuntimeError(USED_OUTSIDE_ITS_MODULE.format(shape=tuple(parameter.shape)))
        return layer.squared_norms(parameter, size)  # zero if the layer took no part in this pass

    def weighted_sum(self, parameter: nn.Parameter, factors: torch.Tensor, size: int,
                     drop: torch.Tensor | None = None) -> torch.Tensor:
        """Flat ``sum_i c_i grad_i`` of a book-kept parameter (``drop``: samples that contribute 0)."""
        return self._bookkept_by_parameter[id(parameter)].weighted_sum(parameter, factors, size, drop)

    def clear_bookkeeping(self) -> None:
        for layer in self._bookkept_layers.values():
            layer.clear()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.clear_bookkeeping()
        super().zero_grad(set_to_none=set_to_none)

    def remove_hooks(self) -> None:
        for hook in getattr(self, "_bookkeeping_hooks", []):
            hook.remove()
        self._bookkeeping_hooks = []
        super().remove_hooks()
