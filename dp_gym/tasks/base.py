"""The Task interface (what is fine-tuned on what) and its name registry: the plug-in point.

A Task owns everything specific to a model and a data set; the engine and the environment
only see this interface. Register your own with ``register_task("name", MyTask)`` or name it by
import path (``"my_package.tasks:MyTask"``) in a config.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from dp_gym.utils.registry import Registry

Batch = Mapping[str, torch.Tensor]


def perplexity(loss: float) -> float:
    """``exp(loss)`` of a mean per-token negative log-likelihood (capped at ``exp(50)``)."""
    return math.exp(min(loss, 50.0))


class Task(abc.ABC):
    """A private fine-tuning problem: model, private train data, public validation, losses.

    Subclasses implement:

    * ``build_model()``: a fresh copy of the (pre-trained) base model, in train mode;
    * ``train_size``: number of private training examples;
    * ``train_batch(indices)``: the private examples at ``indices`` as a batch of tensors;
    * ``per_sample_loss(model, batch)``: a ``(B,)`` tensor of per-example losses;
    * ``evaluate(model)``: the public validation loss, computed on public data only, so it can be
      shown to a controller at no privacy cost.

    **The batch contract** (what makes the per-sample gradients, and so the clipping, right):

    * every tensor of a batch has the batch dimension first;
    * a batch may be empty (Poisson sampling draws empty batches): ``train_batch`` of no index
      must work, and ``per_sample_loss`` is then not called;
    * no operation may mix examples (no batch norm, no in-batch negatives, no loss averaged over
      the batch): example ``i``'s loss depends on example ``i`` only;
    * positions are expanded to the batch (``position_ids`` of shape ``(B, T)``, not ``(1, T)``:
      Opacus issue #841);
    * ``per_sample_loss`` receives the task's own model (hooks for per-sample gradients sit on its
      submodules); it never needs the engine's wrapper.

    **The public metric.** ``metric(loss)`` maps the validation loss to the number reports show,
    named ``metric_name`` (perplexity for the language tasks here, the default).

    **A public selection split** (optional): ``has_selection_split`` and ``evaluate_selection(model)``,
    the loss on a second public held-out split, disjoint from the validation split. The env's
    ``returned_model: best_public`` picks the iterate it returns with it, so the validation loss
    that reports the returned model is not the one that chose it.

    **Optional capabilities** are protocols, checked with ``isinstance``:
    :class:`SupportsPrivacyAttacks` (records for canary exposure and membership inference) and
    :class:`SupportsTokenizer` (a tokenizer saved next to a fine-tuned model).
    """

    #: the name of :meth:`metric` in reports
    metric_name: str = "perplexity"
    #: True for a public proxy (:meth:`proxy`): its training data is public, so its episodes spend
    #: no privacy of anyone's private data
    public_training_data: bool = False

    @abc.abstractmethod
    def build_model(self) -> nn.Module: ...

    @property
    @abc.abstractmethod
    def train_size(self) -> int: ...

    @abc.abstractmethod
    def train_batch(self, indices: torch.Tensor) -> Batch: ...

    @abc.abstractmethod
    def per_sample_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...

    @abc.abstractmethod
    def evaluate(self, model: nn.Module) -> float: ...

    @property
    def has_selection_split(self) -> bool:
        """Whether :meth:`evaluate_selection` works (default: no)."""
        return False

    def evaluate_selection(self, model: nn.Module) -> float:
        """The loss on the public *selection* split: public data held out of both the training and
        the validation split, used only to choose which iterate a run returns.

        Raises:
            NotImplementedError: the task has no selection split (see :attr:`has_selection_split`).
        """
        raise NotImplementedError(f"task {type(self).__name__} has no public selection split: implement "
                                  "Task.evaluate_selection and has_selection_split")

    @classmethod
    def proxy(cls, task_kwargs: dict[str, Any], **instance: Any) -> Task:
        """A public proxy of the task built from ``task_kwargs``: the same model family and the same
        parameter groups, with the private training data replaced by public data that differs from
        it (another corpus, not the private generator with another seed). Controllers and baselines
        learn on proxies, then run once on the private task. ``instance`` picks the public data
        (corpus, size, seed; ``n_select`` > 0 asks for a public selection split as well). The proxy
        must set ``public_training_data = True``.

        Raises:
            NotImplementedError: the task has no proxy (implement this; see ``TextTask.proxy``).
        """
        raise NotImplementedError(f"task {cls.__name__} has no public proxy: implement Task.proxy (the same model, "
                                  "public training records)")

    @classmethod
    def proxy_corpora(cls, task_kwargs: dict[str, Any]) -> tuple[str, ...]:
        """The public corpora :meth:`proxy` draws from by default for the task of ``task_kwargs`` (an
        instance distribution may name others); never the task's own private data. Default: none,
        so a distribution must name them."""
        return ()

    def metric(self, loss: float) -> float:
        """The public metric of a validation loss (default: perplexity of a mean per-token NLL)."""
        return perplexity(loss)

    def describe(self) -> dict[str, Any]:
        """A JSON-serializable description for reports."""
        return {"task": type(self).__name__, "train_size": self.train_size, "metric": self.metric_name}


@runtime_checkable
class SupportsTokenizer(Protocol):
    """A task whose model reads text through a tokenizer (saved with fine-tuned models)."""

    tokenizer: Any


@runtime_checkable
class SupportsPrivacyAttacks(Protocol):
    """A task whose records the privacy attacks can score (:mod:`dp_gym.evaluation`).

    ``canaries``: inserted secrets (may be empty); ``member_records()``: private training records
    that are not canaries; ``nonmember_records(n)``: fresh records of the private distribution.
    """

    tokenizer: Any
    canaries: list

    def member_records(self) -> list[str]: ...

    def nonmember_records(self, n: int) -> list[str]: ...


#: the per-token tensors ``trim_padding`` shortens; everything else (images, features) passes through
TOKEN_KEYS = ("input_ids", "attention_mask", "labels")


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the padding columns no record of the batch uses (right padding, causal attention:
    a record's loss does not depend on how far the batch is padded). Only the per-token tensors
    (:data:`TOKEN_KEYS`) are trimmed."""
    mask = batch["attention_mask"]
    if mask.shape[0] == 0:
        return batch
    length = max(int(mask.sum(dim=1).max()), 2)
    return {key: value[:, :length] if key in TOKEN_KEYS else value for key, value in batch.items()}


class EncodedTrainSplit:
    """Mixin for tasks that keep their private split as tensors in ``self._train`` (batch first,
    with an ``attention_mask``): ``train_size`` and padding-trimmed ``train_batch``."""

    _train: dict[str, torch.Tensor]

    @property
    def train_size(self) -> int:
        return int(self._train["attention_mask"].shape[0])

    def train_batch(self, indices: torch.Tensor) -> Batch:
        return trim_padding({key: value[indices] for key, value in self._train.items()})


def _check_task_class(name: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"task {name!r} is not a subclass of dp_gym.tasks.Task")


TASKS: Registry[type[Task]] = Registry("task", check=_check_task_class)


def register_task(name: str, cls: type[Task], force: bool = False) -> None:
    """Register ``cls`` under ``name``; a duplicate name raises unless ``force``."""
    TASKS.register(name, cls, force=force)


def registered_tasks() -> list[str]:
    return TASKS.names()


def resolve_task(name: str) -> type[Task]:
    """The Task class registered as ``name``, or imported from ``"module:Class"``.

    Raises:
        ValueError: naming the allowed values when the name is unknown or does not import.
    """
    return TASKS.get(name)


def create_task(name: str, **kwargs: Any) -> Task:
    return resolve_task(name)(**kwargs)
