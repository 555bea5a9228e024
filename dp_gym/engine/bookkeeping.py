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

Embeddings (``nn.Embedding``, Li et al. 2021's ghost norm for embeddings): example ``i``'s gradient
of the table is ``E_i = sum_s e_{x_s} delta_s^T`` (``x_s`` the token ids, ``delta_s`` the gradients of
the embedding outputs), non-zero only in the rows of tokens the example uses. Summing the
``delta_s`` of positions that share ``(i, x_s)`` (one sort of the ``B T`` keys, one ``index_add``)
gives those rows, so ``||E_i||^2`` costs ``O(B T d)`` where Opacus writes a ``B x V x d`` tensor.
Positions whose id is the ``padding_idx`` get no gradient, as in autograd (Opacus' own embedding
rule gives them one; see :mod:`dp_gym.engine.grad_samplers`).

Tied input embedding and output head (GPT-2: ``lm_head.weight is wte.weight``): the per-sample
gradient is ``E_i + H_i`` with ``H_i = G_i^T A_i`` (``G_i`` the ``T x V`` logit gradients, ``A_i`` the
head's inputs), so

    ``||E_i + H_i||^2 = ||E_i||^2 + ||H_i||^2 + 2 <E_i, H_i>``,
    ``<E_i, H_i> = sum_s delta_s . H_i[x_s] = sum_{s,t} G_i[t, x_s] (delta_s . a_t)``,

with ``||H_i||^2`` from the Gram matrices (or from ``H_i`` formed, by :func:`use_ghost_norm`); the
clipped sum is ``(c G)^T A`` plus ``index_add`` of the ``c_i delta_s``. No ``B x V x d`` tensor is
formed on the ghost way.

Everything else (layer norms, RMS norms, embeddings with ``max_norm``/``sparse``/
``scale_grad_by_freq``, other shared weights, any other layer type Opacus knows) stays with Opacus'
hooks and per-sample gradients, untouched.
"""

from __future__ import annotations

import contextlib
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

    def __post_init__(self) -> None:
        # fixed at construction: the engine switches requires_grad off while it runs the backward pass
        self.trains_weight = self.module.weight.requires_grad
        self.trains_bias = self.module.bias is not None and self.module.bias.requires_grad

    def clear(self) -> None:
        self.inputs.clear()
        self.ghost = self.weight_samples = self.bias_samples = None

    def on_forward(self, activation: torch.Tensor) -> int:
        self.inputs.append(activation.detach())
        return len(self.inputs) - 1

    def on_backward(self, slot: int, grad: torch.Tensor) -> None:
        activation, self.inputs[slot] = self.inputs[slot], None
        size = _same_batch("a linear layer", activation, grad)
        # fp32 per-sample information whatever the forward pass ran in (bf16 autocast, half weights)
        inputs = activation.reshape(size, -1, activation.shape[-1]).to(_accurate(activation.dtype))
        grads = grad.detach().reshape(size, -1, grad.shape[-1]).to(inputs.dtype)
        if self.trains_bias:
            self.bias_samples = _accumulate(self.bias_samples, grads.sum(dim=1))
        if not self.trains_weight:
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
            return torch.zeros(size, device=parameter.device)
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
            return torch.zeros(parameter.numel(), device=parameter.device)
        return weighted_sample_sum(samples, factors, size, drop)

    def has_samples(self, parameter: nn.Parameter) -> bool:
        """Whether a backward pass through this layer left per-sample information for ``parameter``."""
        if parameter is self.module.weight:
            return self.ghost is not None or self.weight_samples is not None
        return self.bias_samples is not None


@dataclass
class _BookkeptEmbedding:
    """Per-sample gradient information of one ``nn.Embedding`` over one forward and backward pass.

    Every call's ``(ids (B, T), delta (B, T, d))`` is kept; several calls in one pass are one longer
    sequence (the per-sample gradient is a sum over positions either way).
    """

    module: nn.Embedding
    inputs: list[torch.Tensor | None] = field(default_factory=list)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def clear(self) -> None:
        self.inputs.clear()
        self.calls.clear()

    def on_forward(self, ids: torch.Tensor) -> int:
        self.inputs.append(ids.detach())
        return len(self.inputs) - 1

    def on_backward(self, slot: int, grad: torch.Tensor) -> None:
        ids, self.inputs[slot] = self.inputs[slot], None
        size = _same_batch("an embedding", ids, grad)
        ids = ids.reshape(size, -1)
        grads = grad.detach().reshape(size, -1, grad.shape[-1]).to(_accurate(grad.dtype))
        if self.module.padding_idx is not None:  # autograd gives the padding row no gradient
            grads = grads.masked_fill((ids == self.module.padding_idx).unsqueeze(-1), 0.0)
        self.calls.append((ids, grads))

    def _check(self, size: int) -> None:
        for ids, _ in self.calls:
            if ids.shape[0] != size:
                raise RuntimeError(
                    f"an embedding saw batch dimension {ids.shape[0]} != {size}; a module saw a broadcast input "
                    "(e.g. GPT-2 position_ids of shape (1, T): pass them expanded, Opacus #841)")

    def positions(self, size: int, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All calls' ``(ids (B, T'), delta (B, T', d))``; a dropped sample's ``delta`` is zeroed."""
        self._check(size)
        ids = torch.cat([ids for ids, _ in self.calls], dim=1)
        grads = torch.cat([grads for _, grads in self.calls], dim=1)
        if drop is not None:
            grads = torch.where(drop.view(size, 1, 1), torch.zeros((), dtype=grads.dtype), grads)
        return ids, grads

    def squared_norms(self, parameter: nn.Parameter, size: int) -> torch.Tensor:
        """``||E_i||^2``: the rows of example ``i`` are the sums of its ``delta_s`` sharing a token id."""
        if not self.calls:
            return torch.zeros(size, device=parameter.device)
        ids, grads = self.positions(size)
        vocabulary = self.module.num_embeddings
        keys = (torch.arange(size, device=ids.device).unsqueeze(1) * vocabulary + ids).reshape(-1)
        unique, inverse = torch.unique(keys, return_inverse=True)
        rows = torch.zeros(unique.shape[0], grads.shape[-1], dtype=grads.dtype, device=grads.device)
        rows.index_add_(0, inverse, grads.reshape(-1, grads.shape[-1]))
        norms = torch.zeros(size, dtype=grads.dtype, device=grads.device)
        return norms.index_add_(0, torch.div(unique, vocabulary, rounding_mode="floor"), rows.pow(2).sum(dim=1))

    def weighted_sum(self, parameter: nn.Parameter, factors: torch.Tensor, size: int,
                     drop: torch.Tensor | None = None) -> torch.Tensor:
        """Flat ``sum_i c_i E_i``: one ``index_add`` of the scaled ``delta_s`` into the table's rows."""
        total = torch.zeros(parameter.shape, device=parameter.device)
        if self.calls:
            ids, grads = self.positions(size, drop)
            grads = grads * factors.to(grads.dtype).view(size, 1, 1)
            total.index_add_(0, ids.reshape(-1), grads.reshape(-1, grads.shape[-1]).to(total.dtype))
        self.calls.clear()
        return total.reshape(-1)

    def has_samples(self, parameter: nn.Parameter) -> bool:
        return bool(self.calls)


@dataclass
class _TiedEmbeddingHead:
    """One weight shared by an input embedding and an output head (``nn.Linear``, ``V x d``).

    Per-sample gradient ``E_i + H_i``; see the module doc for the cross term.
    """

    embedding: _BookkeptEmbedding
    head: _BookkeptLayer

    def squared_norms(self, parameter: nn.Parameter, size: int) -> torch.Tensor:
        self.head._check(size)
        total = self.embedding.squared_norms(parameter, size)
        head = self.head
        if head.ghost is None and head.weight_samples is None:
            return total
        ids, deltas = self.embedding.positions(size) if self.embedding.calls else (None, None)
        if head.ghost is not None:
            inputs, grads = head.ghost  # A (B, T2, d), G (B, T2, V)
            gram_inputs = torch.bmm(inputs, inputs.transpose(1, 2))
            gram_grads = torch.bmm(grads, grads.transpose(1, 2))
            total = total + (gram_inputs * gram_grads).sum(dim=(1, 2))
            if ids is not None:
                # G_i[t, x_s] for every head position t and embedding position s: (B, T2, T1)
                picked = torch.gather(grads, 2, ids.unsqueeze(1).expand(-1, grads.shape[1], -1))
                total = total + 2 * (picked * torch.bmm(inputs, deltas.transpose(1, 2))).sum(dim=(1, 2))
        else:
            samples = head.weight_samples  # H (B, V, d)
            total = total + torch.linalg.vector_norm(samples.reshape(size, -1), dim=1) ** 2
            if ids is not None:
                rows = torch.gather(samples, 1, ids.unsqueeze(-1).expand(-1, -1, samples.shape[2]))  # H_i[x_s]
                total = total + 2 * (rows * deltas).sum(dim=(1, 2))
        return total.clamp(min=0)

    def weighted_sum(self, parameter: nn.Parameter, factors: torch.Tensor, size: int,
                     drop: torch.Tensor | None = None) -> torch.Tensor:
        total = self.embedding.weighted_sum(parameter, factors, size, drop)
        if self.head.has_samples(parameter):
            total.add_(self.head.weighted_sum(parameter, factors, size, drop).to(total.dtype))
        return total

    def has_samples(self, parameter: nn.Parameter) -> bool:
        return self.embedding.has_samples(parameter) or self.head.has_samples(parameter)


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


def _plain_embedding(module: nn.Module) -> bool:
    """An ``nn.Embedding`` whose gradient is the plain scatter of output gradients (dense, unscaled)."""
    return (type(module) is nn.Embedding and module.max_norm is None and not module.sparse
            and not module.scale_grad_by_freq)


def _tied_head(embedding: nn.Embedding, hooked: list[nn.Module], owners: dict[int, int]) -> nn.Linear | None:
    """The one ``nn.Linear`` (``V x d`` weight) that shares ``embedding``'s weight, if it is the only
    other owner and owns its other trainable parameters alone; otherwise ``None`` (Opacus keeps both)."""
    if owners[id(embedding.weight)] != 2:
        return None
    heads = [sub for sub in hooked if type(sub) is nn.Linear and sub.weight is embedding.weight]
    if len(heads) != 1:
        return None
    others = [p for p in heads[0].parameters(recurse=False) if p.requires_grad and p is not embedding.weight]
    return heads[0] if all(owners[id(p)] == 1 for p in others) else None


def _same_batch(what: str, inputs: torch.Tensor, grad: torch.Tensor) -> int:
    """The batch size of a layer call whose input and output gradient agree on it (else an error)."""
    if inputs.shape[0] != grad.shape[0]:
        raise RuntimeError(f"{what}'s input has batch dimension {inputs.shape[0]} but its output gradient "
                           f"{grad.shape[0]}")
    return inputs.shape[0]


def _accurate(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision dtypes (bf16, fp16), the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _accumulate(total: torch.Tensor | None, part: torch.Tensor) -> torch.Tensor:
    return part if total is None else total + part


class BookkeepingGradSampleModule(GradSampleModule):
    """Opacus' ``GradSampleModule`` whose linear layers are book-kept instead of sampled.

    A ``nn.Linear`` / ``Conv1D`` is book-kept when Opacus would hook it and none of its trainable
    parameters belongs to another module as well; an ``nn.Embedding`` when its weight is its own or
    is tied to exactly one ``nn.Linear`` head (the pair is book-kept together: the norm of the *sum*
    of the two per-sample gradients). Any other shared weight stays with Opacus. Book-kept
    parameters get no ``grad_sample``;
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
        layers: dict[nn.Module, _BookkeptLayer | _BookkeptEmbedding] = {}
        tied: list[_TiedEmbeddingHead] = []
        for sub in hooked:
            trainable = [p for p in sub.parameters(recurse=False) if p.requires_grad]
            if type(sub) in linear and trainable and all(owners[id(p)] == 1 for p in trainable):
                layers[sub] = _BookkeptLayer(sub, weight_is_out_by_in=isinstance(sub, nn.Linear))
            elif _plain_embedding(sub) and len(trainable) == 1 and trainable[0] is sub.weight:
                if owners[id(sub.weight)] == 1:
                    layers[sub] = _BookkeptEmbedding(sub)
                    continue
                head = _tied_head(sub, hooked, owners)
                if head is not None:
                    layers[sub] = embedding = _BookkeptEmbedding(sub)
                    layers[head] = head_layer = _BookkeptLayer(head, weight_is_out_by_in=True)
                    tied.append(_TiedEmbeddingHead(embedding, head_layer))
        object.__setattr__(self, "_bookkept_layers", layers)
        super().__init__(module, batch_first=batch_first, loss_reduction=loss_reduction, **kwargs)
        self._bookkept_by_parameter = {
            id(p): layer for layer in layers.values() for p in layer.module.parameters(recurse=False) if p.requires_grad
        }
        for pair in tied:  # the shared weight answers for both modules; a head's own bias stays the head's
            self._bookkept_by_parameter[id(pair.embedding.module.weight)] = pair
        self._skipping = False
        self._usage_confirmed = False
        #: the trainable book-kept parameters (each once, a tied weight too), switched off by
        #: :meth:`weight_gradients_skipped`
        self._bookkept_parameters = list({id(p): p for layer in layers.values()
                                          for p in layer.module.parameters(recurse=False) if p.requires_grad}.values())
        self._bookkeeping_hooks = [layer.module.register_forward_hook(self._capture) for layer in layers.values()]

    def iterate_submodules(self, module: nn.Module):
        for sub in super().iterate_submodules(module):
            if sub not in self._bookkept_layers:
                yield sub

    def _capture(self, module: nn.Module, inputs, output) -> torch.Tensor | None:
        if not (self.hooks_enabled and module.training and torch.is_grad_enabled()):
            return None
        if not isinstance(output, torch.Tensor):
            return None
        if not output.requires_grad:
            if not self._skipping:
                return None
            # weights switched off and an input without gradient (the first layer: token ids, cached
            # features): the output becomes the leaf the backward pass ends at, so its gradient still
            # arrives here (no gradient could flow further back anyway)
            output = output.detach().requires_grad_()
        layer = self._bookkept_layers[module]
        slot = layer.on_forward(inputs[0])
        output.register_hook(lambda grad: layer.on_backward(slot, grad))
        return output

    @contextlib.contextmanager
    def weight_gradients_skipped(self):
        """Run a forward and backward pass in which autograd does not form ``.grad`` of book-kept
        parameters (their per-sample norms and clipped sums come from the hooks; the plain batch
        gradient would be a second weight-gradient product per layer, about a third of the
        backward pass, and a model-sized tensor). The first pass runs with every gradient, once,
        to check that no book-kept parameter is used outside its module (:data:`USED_OUTSIDE_ITS_MODULE`
        is detected through that ``.grad``); after :meth:`confirm_usage` the later passes skip them."""
        if not self._usage_confirmed:
            yield
            return
        switched = self._bookkept_parameters
        for parameter in switched:
            parameter.requires_grad_(False)
        self._skipping = True
        try:
            yield
        finally:
            self._skipping = False
            for parameter in switched:
                parameter.requires_grad_(True)

    def confirm_usage(self) -> None:
        """Record that a full pass found every book-kept parameter used through its own module."""
        self._usage_confirmed = True

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
