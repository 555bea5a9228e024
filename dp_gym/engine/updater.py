"""One DP-SGD update with per-group clipping, per-group noise and pruning of the noisy update.

Why this is written here rather than taken from Opacus: Opacus' ``DPOptimizer`` clips per
sample with one threshold (flat) or per layer with one *shared* noise multiplier, and it releases
nothing but the noisy gradient. dp-gym needs a clip threshold *and* a noise multiplier per group,
chosen anew at every update, plus privatized statistics for the controller that compose with the
gradient release in the same sampled step. Everything below that is not specific to that (per-sample
gradients, the Poisson sampler, the noise generator, the accountants) is Opacus' own.

The update, for a Poisson batch ``B`` (rate ``q``, expected size ``m = qN``) and groups ``g``:

1. per-sample gradients ``g_{i,g}`` (Opacus ``GradSampleModule`` hooks), or for linear layers
   only their norms and the clipped sums of step 2, from the layer's inputs and output gradients
   (``per_sample="bookkeeping"``, the default: :mod:`dp_gym.engine.bookkeeping`; exact, cheaper);
2. clip: ``gbar_{i,g} = g_{i,g} * min(1, C_g / ||g_{i,g}||)``;
3. noise: ``G_g = (sum_i gbar_{i,g} + N(0, (sigma_g C_g)^2 I)) / m``;
4. prune (post-processing): zero the ``floor(p_g * n_g)`` coordinates of ``G_g`` with the smallest
   ``|G_g|`` (exactly that many; ties broken by index);
5. optimizer step on the pruned ``G_g``.

Optionally, on the same sample: privatized unclipped counts ``b_g = sum_i 1[||g_{i,g}|| <= C_g] +
N(0, sigma_b^2)`` and a privatized loss ``(sum_i min(max(l_i, 0), L) + N(0, (sigma_l L)^2)) / m``.
The whole update is one sampled Gaussian mechanism with noise multiplier
``z = (sum_g sigma_g^-2 + G/sigma_b^2 + 1/sigma_l^2)^(-1/2)``; composing, fitting and recording
it is :class:`dp_gym.privacy.PrivacyBudget`'s job, not the updater's.

Every Gaussian draw of an update comes from the one generator the caller passes for it, which
must be secret (:class:`dp_gym.engine.randomness.EpisodeRandomness`): noise derivable from
anything public can be subtracted from the release.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus.grad_sample import GradSampleModule
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

from dp_gym.engine.bookkeeping import (
    USED_OUTSIDE_ITS_MODULE,
    BookkeepingGradSampleModule,
    weighted_sample_sum,
)
from dp_gym.engine.grad_samplers import register_transformers_grad_samplers
from dp_gym.engine.parameter_groups import ParameterGroups
from dp_gym.engine.randomness import add_gaussian_noise_, fresh_generator
from dp_gym.privacy import NO_STATISTICS, ReleasedStatistics

logger = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]
PER_SAMPLE_MODES = ("bookkeeping", "opacus")
PerSampleLoss = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass
class StepReport:
    """What one DP update releases. Every field is safe to show a controller.

    Fields computed from private data are either post-processing of the noisy gradient
    (``noisy_grad_norm``, ``update_norm``) or privatized releases whose noise the budget composes
    into the update's multiplier (``unclipped_fraction``, ``train_loss``). The realized batch size
    is deliberately absent: under add/remove adjacency it is not free to release.

    ``oracle`` holds raw per-sample statistics and is filled only when the updater was built
    with ``oracle=True``; a run that reads it is not differentially private.
    """

    group_names: list[str]
    clip: np.ndarray
    noise: np.ndarray
    prune: np.ndarray
    noisy_grad_norm: np.ndarray
    update_norm: np.ndarray
    unclipped_fraction: np.ndarray | None
    train_loss: float | None
    sample_rate: float
    pruned_fraction: float
    noisy_update: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    oracle: dict[str, np.ndarray] | None = None


def _as_group_array(name: str, values: float | Sequence[float] | np.ndarray, groups: list[str],
                    low: float, high: float, low_inclusive: bool) -> np.ndarray:
    array = np.broadcast_to(np.asarray(values, dtype=np.float64), (len(groups),)).copy()
    for index, value in enumerate(array):
        if not math.isfinite(value):
            raise ValueError(f"{name} for group {groups[index]!r} must be finite, got {value!r}")
        too_low = value < low if low_inclusive else value <= low
        if too_low or value > high:
            bracket = "[" if low_inclusive else "("
            raise ValueError(f"{name} for group {groups[index]!r} must be in {bracket}{low}, {high}], got {value!r}")
    return array


class DPUpdater:
    """Runs DP updates with per-group clip ``C_g``, noise ``sigma_g`` and prune ratio ``p_g``.

    Args:
        model: the model to train (wrapped in an Opacus ``GradSampleModule`` here, unless it
            already is one).
        optimizer: an optimizer over the model's trainable parameters (SGD, Adam, AdamW, ...).
        groups: the parameter groups (:class:`ParameterGroups` of the same model).
        expected_batch_size: ``m = q N``; sums are divided by it (not by the realized size,
            which would leak it).
        sample_rate: the Poisson rate ``q`` the caller samples batches with (reported for the
            accountant).
        loss_fn: ``loss_fn(module, batch) -> (B,)`` per-sample losses.
        loss_bound: ``L``, the clip of each per-sample loss in the privatized loss release.
        secure_mode: draw noise with Opacus' floating-point-attack-resistant sampler.
        oracle: also put raw per-sample norm quantiles in ``StepReport.oracle`` (not private).
        per_sample: ``"bookkeeping"`` (linear layers give per-sample norms and clipped sums
            without per-sample gradients; same numbers up to float rounding) or ``"opacus"``
            (every per-sample gradient materialized by Opacus' hooks).
        autocast: run the forward pass under bf16 autocast on the model's device. Per-sample
            norms, clip factors, the clipped sums and the noise are computed in fp32 all the same
            (low-precision per-sample information is cast up before any norm), so the
            sensitivity bound is exact whatever the precision of the forward pass.

    The model must already be on its device; every tensor the update makes is made there, and
    the noise is drawn from a generator on that device.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        groups: ParameterGroups,
        expected_batch_size: float,
        *,
        sample_rate: float,
        loss_fn: PerSampleLoss,
        loss_bound: float = 10.0,
        secure_mode: bool = False,
        oracle: bool = False,
        per_sample: str = "bookkeeping",
        autocast: bool = False,
    ):
        if per_sample not in PER_SAMPLE_MODES:
            raise ValueError(f"per_sample must be one of {list(PER_SAMPLE_MODES)}, got {per_sample!r}")
        if expected_batch_size <= 0:
            raise ValueError(f"expected_batch_size must be > 0, got {expected_batch_size}")
        if not (0 < sample_rate <= 1):
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if loss_bound <= 0:
            raise ValueError(f"loss_bound must be > 0, got {loss_bound}")
        register_transformers_grad_samplers()
        if isinstance(model, GradSampleModule):
            self.module = model
        else:
            wrapper = BookkeepingGradSampleModule if per_sample == "bookkeeping" else GradSampleModule
            self.module = wrapper(model, batch_first=True, loss_reduction="sum")
        self.per_sample = "bookkeeping" if isinstance(self.module, BookkeepingGradSampleModule) else "opacus"
        self.optimizer = optimizer
        self.groups = groups
        self.group_names = groups.names
        self.expected_batch_size = float(expected_batch_size)
        self.sample_rate = float(sample_rate)
        self.loss_fn = loss_fn
        self.loss_bound = float(loss_bound)
        self.secure_mode = secure_mode
        self.oracle = oracle
        self.nonfinite_samples = 0  # local log only: never released
        self.autocast = autocast
        first = next(iter(groups.all_parameters()))
        self.device = first.device
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [name for g in groups.names for name, p in zip(groups.parameter_names(g), groups.parameters(g),
                                                                   strict=True) if id(p) not in optimized]
        if missing:
            raise ValueError(f"the optimizer does not update grouped parameters {missing[:5]}")

    # ------------------------------------------------------------------ the update
    def step(
        self,
        batch: Batch,
        clip: float | Sequence[float],
        noise: float | Sequence[float],
        prune: float | Sequence[float] = 0.0,
        *,
        statistics: ReleasedStatistics = NO_STATISTICS,
        generator: torch.Generator | None = None,
    ) -> StepReport:
        """One DP update on ``batch`` (a Poisson sample; may be empty).

        Args:
            batch: tensors with the batch dimension first, passed to ``loss_fn``.
            clip: ``C_g`` per group (or one value for all), > 0.
            noise: ``sigma_g`` per group, >= 0 (0 adds no noise: not private).
            prune: ``p_g`` per group in [0, 1]; 1 leaves the group's parameters unchanged.
            statistics: which privatized statistics to release with which noise: unclipped
                fractions when ``statistics.groups_counted`` > 0 (it must equal the number of
                groups), a mean training loss when ``statistics.loss_sigma`` is set.
            generator: the secret generator every Gaussian draw of this update comes from
                (default: a fresh one seeded from OS entropy).

        Raises:
            ValueError: for a NaN/inf or out-of-range clip, noise or prune (the group is named).
        """
        names = self.group_names
        clip_g = _as_group_array("clip", clip, names, 0.0, math.inf, low_inclusive=False)
        noise_g = _as_group_array("noise", noise, names, 0.0, math.inf, low_inclusive=True)
        prune_g = _as_group_array("prune", prune, names, 0.0, 1.0, low_inclusive=True)
        if statistics.groups_counted not in (0, len(names)):
            raise ValueError(f"statistics.groups_counted must be 0 or {len(names)}, got {statistics.groups_counted}")
        generator = generator if generator is not None else fresh_generator(self.device)
        count_noise = statistics.count_sigma if statistics.groups_counted else None
        loss_noise = statistics.loss_sigma

        clipped_sums, unclipped_counts, loss_sum, oracle = self._clipped_sums(batch, clip_g)
        m = self.expected_batch_size

        noisy: dict[str, torch.Tensor] = {}
        noisy_norms = np.zeros(len(names))
        for index, group in enumerate(names):
            total = clipped_sums[group]
            # in place: the clipped sum is this update's own buffer (no second model-sized tensor)
            add_gaussian_noise_(total, float(noise_g[index] * clip_g[index]), generator, self.secure_mode)
            noisy[group] = total.div_(m)
            noisy_norms[index] = float(noisy[group].norm())

        unclipped_fraction = None
        if count_noise is not None:
            noisy_counts = unclipped_counts + _generate_noise(float(count_noise), unclipped_counts,
                                                              generator, self.secure_mode)
            unclipped_fraction = (noisy_counts / m).cpu().numpy().astype(np.float64)
        train_loss = None
        if loss_noise is not None:
            noisy_loss = loss_sum + _generate_noise(float(loss_noise * self.loss_bound), loss_sum,
                                                    generator, self.secure_mode)
            train_loss = float(noisy_loss / m)

        pruned = 0
        for index, group in enumerate(names):
            noisy[group], dropped = prune_smallest(noisy[group], float(prune_g[index]))
            pruned += dropped
        update_norms = self._apply(noisy, frozen={g for g, p in zip(names, prune_g, strict=True) if p >= 1.0})

        return StepReport(
            group_names=list(names),
            clip=clip_g,
            noise=noise_g,
            prune=prune_g,
            noisy_grad_norm=noisy_norms,
            update_norm=update_norms,
            unclipped_fraction=unclipped_fraction,
            train_loss=train_loss,
            sample_rate=self.sample_rate,
            pruned_fraction=pruned / max(1, sum(self.groups.numel(g) for g in names)),
            noisy_update=noisy,
            oracle=oracle,
        )

    # ------------------------------------------------------------------ internals
    def _batch_size(self, batch: Batch) -> int:
        return int(next(iter(batch.values())).shape[0])

    def _clipped_sums(self, batch: Batch, clip_g: np.ndarray):
        """Per group: ``sum_i gbar_{i,g}`` (flat), unclipped counts, clipped loss sum, oracle stats."""
        names = self.group_names
        size = self._batch_size(batch)
        if size == 0:
            sums = {g: torch.zeros(self.groups.numel(g), device=self.device) for g in names}
            return sums, torch.zeros(len(names), device=self.device), torch.zeros((), device=self.device), None

        self.module.zero_grad(set_to_none=True)
        self.module.train()
        # the task gets its own model, never the Opacus wrapper: the wrapper's forward only calls the
        # model, and the per-sample hooks sit on the model's submodules, so they fire either way
        bookkeeping = self.per_sample == "bookkeeping"
        with self.module.weight_gradients_skipped() if bookkeeping else contextlib.nullcontext():
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                losses = self.loss_fn(self.module._module, batch)
            losses = losses.float()
            if losses.shape != (size,):
                raise ValueError(f"loss_fn must return per-sample losses of shape ({size},), got {tuple(losses.shape)}")
            finite_loss = torch.isfinite(losses)
            # A non-finite loss would poison every gradient through backward: drop that sample.
            with warnings.catch_warnings():
                # Opacus hooks the embedding, whose input (token ids) needs no gradient: harmless.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                losses.masked_fill(~finite_loss, 0.0).sum().backward()

        norms = torch.zeros(size, len(names), device=self.device)
        for index, group in enumerate(names):
            for parameter in self.groups.parameters(group):
                norms[:, index] += self._squared_norms(parameter, size)
        norms = norms.sqrt()
        if bookkeeping:
            self.module.confirm_usage()  # no parameter raised USED_OUTSIDE_ITS_MODULE
        # A NaN/inf entry makes the squared norm NaN/inf, so this one check covers every entry
        # (a finite gradient whose squared norm overflows float32 is also dropped: harmless).
        finite = torch.isfinite(norms) & finite_loss.unsqueeze(1)
        clip_t = torch.as_tensor(clip_g, dtype=norms.dtype, device=norms.device)
        # Opacus' rule: factor = min(1, C / (||g|| + 1e-6)); a non-finite sample contributes 0,
        # which is within the sensitivity bound (it is as if the sample were clipped to 0).
        factors = (clip_t / (norms + 1e-6)).clamp(max=1.0)
        factors = torch.where(finite, factors, torch.zeros_like(factors))
        if not bool(finite.all()):
            self.nonfinite_samples += int((~finite).any(dim=1).sum())
            logger.warning("DP update: %d sample(s) had non-finite gradients or loss; they contribute 0",
                           int((~finite).any(dim=1).sum()))

        sums = {}
        for index, group in enumerate(names):
            drop = None if bool(finite[:, index].all()) else ~finite[:, index]
            parts = [self._weighted_sum(parameter, factors[:, index], size, drop)
                     for parameter in self.groups.parameters(group)]
            sums[group] = torch.cat([part.float() for part in parts]).detach()  # noise is added in fp32
        unclipped = ((norms <= clip_t) & finite).sum(dim=0).to(torch.float32)
        loss_sum = losses.detach().masked_fill(~finite_loss, 0.0).clamp(0.0, self.loss_bound).sum()

        oracle = None
        if self.oracle:
            quantiles = torch.tensor([0.1, 0.5, 0.9])
            oracle = {
                "per_sample_norm_quantiles": torch.quantile(norms, quantiles, dim=0).T.numpy(),
                "clean_train_loss": float(losses.detach()[finite_loss].mean()) if bool(finite_loss.any()) else 0.0,
            }
        self.module.zero_grad(set_to_none=True)
        return sums, unclipped, loss_sum, oracle

    def _squared_norms(self, parameter: nn.Parameter, size: int) -> torch.Tensor:
        """``(B,)`` ``||g_i||^2`` of one parameter's per-sample gradients."""
        if self.per_sample == "bookkeeping" and self.module.is_bookkept(parameter):
            return self.module.squared_norms(parameter, size).float()
        # vector_norm reduces in place: no B x numel temporary (x.pow(2).sum() makes one); fp32 always
        samples = _grad_sample(parameter, size).reshape(size, -1)
        return torch.linalg.vector_norm(samples, dim=1, dtype=torch.float32) ** 2

    def _weighted_sum(self, parameter: nn.Parameter, factors: torch.Tensor, size: int,
                      drop: torch.Tensor | None) -> torch.Tensor:
        """Flat ``sum_i c_i g_i`` of one parameter; samples flagged in ``drop`` contribute 0."""
        if self.per_sample == "bookkeeping" and self.module.is_bookkept(parameter):
            return self.module.weighted_sum(parameter, factors, size, drop)
        total = weighted_sample_sum(_grad_sample(parameter, size).float(), factors, size, drop)
        parameter.grad_sample = None  # free B x numel as soon as it is summed
        return total

    @torch.no_grad()
    def _apply(self, noisy: dict[str, torch.Tensor], frozen: set[str]) -> np.ndarray:
        """Optimizer step on the noisy update, and each group's update norm ``||theta_new - theta_old||``;
        groups in ``frozen`` (pruned whole) get no step.

        The step is taken one parameter at a time. torch's optimizers skip a parameter whose
        ``grad`` is None and keep their state (step count, moments, momentum) per parameter, so
        stepping each parameter alone is exactly the step of all of them at once, for every
        optimizer whose update of a parameter reads only that parameter's gradient and state (SGD,
        Adam, AdamW: all of ``torch.optim``'s first-order optimizers; a test checks it bit for bit).
        The update norm then needs a copy of one tensor at a time, not of the whole model
        (GPT-2-small: its 154 MB embedding at the peak instead of 500 MB). A fully pruned group
        keeps ``grad = None``, so momentum or weight decay cannot move it either.
        """
        # nothing but the noisy update may reach the optimizer: no .grad left from the backward pass
        self.optimizer.zero_grad(set_to_none=True)
        norms = []
        for group in self.group_names:
            offset, changes = 0, []
            for parameter in self.groups.parameters(group):
                n = parameter.numel()
                if group not in frozen:
                    # a view, not a copy (a copy would hold a second tensor); torch's optimizers read
                    # .grad and never write it
                    parameter.grad = noisy[group][offset : offset + n].view_as(parameter).to(parameter.dtype)
                    before = parameter.detach().clone()
                    self.optimizer.step()
                    parameter.grad = None
                    changes.append(torch._foreach_norm([before.sub_(parameter.detach())])[0])
                offset += n
            norms.append(float(torch.linalg.vector_norm(torch.stack(changes))) if changes else 0.0)
        return np.array(norms)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """No generator state: each update's generator comes from the caller's secret streams."""
        return {"nonfinite_samples": self.nonfinite_samples}

    def load_state_dict(self, state: dict) -> None:
        self.nonfinite_samples = int(state["nonfinite_samples"])


def _grad_sample(parameter: nn.Parameter, size: int) -> torch.Tensor:
    sample = getattr(parameter, "grad_sample", None)
    if sample is None:
        if parameter.grad is not None:
            raise RuntimeError(USED_OUTSIDE_ITS_MODULE.format(shape=tuple(parameter.shape)))
        # The parameter took no part in this forward pass: its per-sample gradients are zero.
        return torch.zeros(size, *parameter.shape, device=parameter.device)
    if isinstance(sample, list):
        sample = torch.stack(sample).sum(0)
    if sample.shape[0] != size:
        raise RuntimeError(
            f"per-sample gradient of a parameter of shape {tuple(parameter.shape)} has batch dimension "
            f"{sample.shape[0]} != {size}; a module saw a broadcast input (e.g. GPT-2 position_ids of "
            "shape (1, T): pass them expanded to the batch, Opacus issue #841)"
        )
    return sample


def prune_smallest(update: torch.Tensor, ratio: float) -> tuple[torch.Tensor, int]:
    """Zero exactly ``floor(ratio * n)`` smallest-magnitude coordinates of a flat update.

    Post-processing of an already-noised release: costs no privacy. Returns the pruned copy
    and the number of coordinates zeroed.

    The ``drop``-th smallest magnitude ``t`` (:func:`kth_smallest`), every coordinate below ``t``,
    and of those equal to ``t`` the ones with the lowest indices until exactly ``drop`` are zeroed.
    """
    n = update.numel()
    drop = min(n, int(math.floor(ratio * n + 1e-9)))
    if drop == 0:
        return update, 0
    if drop == n:
        return torch.zeros_like(update), n
    magnitudes = update.abs()
    threshold = kth_smallest(magnitudes, drop)
    zeroed = magnitudes < threshold
    missing = drop - int(zeroed.sum())
    if missing > 0:
        ties = torch.nonzero(magnitudes == threshold).squeeze(1)[:missing]
        zeroed[ties] = True
    if not math.isfinite(float(threshold)):
        return update.masked_fill(zeroed, 0.0), drop  # an inf to zero: inf * 0 would be NaN
    # a product with the kept mask: 3x faster than ``masked_fill`` on a CPU (session 10's profile)
    return update * zeroed.logical_not_(), drop


#: above this many coordinates, :func:`kth_smallest` narrows the search with a sample first
SELECTION_SAMPLE_ABOVE = 1_000_000


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The exact ``k``-th smallest (1-based) of a flat tensor, as a 0-d tensor.

    ``kthvalue`` and ``topk`` over GPT-2-small's 124M coordinates take seconds on a CPU. For large
    inputs a fixed sample (65536 coordinates; the seed is public: pruning is post-processing, so
    nothing here needs to be secret) brackets the value between two of its quantiles, one pass
    counts what lies below the bracket, and the k-th is then selected inside the bracket only. The
    result is exact whatever the sample; an unlucky bracket falls back to ``kthvalue`` on everything.
    """
    n = values.numel()
    if n <= SELECTION_SAMPLE_ABOVE:
        return _select(values, k)
    generator = torch.Generator(device=values.device).manual_seed(0)
    sample = values[torch.randint(n, (65536,), generator=generator, device=values.device)].float()
    rank = k / n
    low, high = torch.quantile(sample, torch.tensor([max(rank - 0.02, 0.0), min(rank + 0.02, 1.0)],
                                                    device=values.device)).to(values.dtype)
    below = int((values < low).sum())
    window = values[(values >= low) & (values <= high)]
    if below < k <= below + window.numel():
        return _select(window, k - below)
    return _select(values, k)


def _select(values: torch.Tensor, k: int) -> torch.Tensor:
    """The exact ``k``-th smallest of a flat tensor: NumPy's introselect on a CPU (half the time of
    ``torch.kthvalue`` on a fresh update of 446k coordinates), ``torch.kthvalue`` elsewhere."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        array = values.detach().numpy()
        return torch.as_tensor(np.partition(array, k - 1)[k - 1])
    return torch.kthvalue(values, k).values
