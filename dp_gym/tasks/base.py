"""The Task interface (what is fine-tuned on what) and its name registry: the plug-in point.

A Task owns everything specific to a model and a data set; the engine and the environment
only see this interface. Register your own with ``register_task("name", MyTask)`` or name it by
import path (``"my_package.tasks:MyTask"``) in a config.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

Batch = Mapping[str, torch.Tensor]


class Task(abc.ABC):
    """A private fine-tuning problem: model, private train data, public validation, losses.

    Subclasses implement:

    * ``build_model()``: a fresh copy of the (pre-trained) base model, in train mode;
    * ``train_size``: number of private training examples;
    * ``train_batch(indices)``: the private examples at ``indices`` as a batch of tensors;
    * ``per_sample_loss(model, batch)``: a ``(B,)`` tensor of losses (must be per example: no
      operation may mix examples, or per-sample gradients are wrong);
    * ``evaluate(model)``: the public validation loss (mean per token), computed on public data
      only, so it can be shown to a controller at no privacy cost.
    """

    #: the group strategy the task recommends (see :class:`dp_gym.engine.ParameterGroups`)
    default_grouping: str = "per_block"

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

    def describe(self) -> dict[str, Any]:
        """A JSON-serializable description for reports."""
        return {"task": type(self).__name__, "train_size": self.train_size}


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


_TASKS: dict[str, type[Task]] = {}


def register_task(name: str, cls: type[Task], force: bool = False) -> None:
    """Register ``cls`` under ``name``; a duplicate name raises unless ``force``."""
    if not force and name in _TASKS and _TASKS[name] is not cls:
        raise ValueError(f"a task named {name!r} is already registered ({_TASKS[name].__qualname__})")
    _TASKS[name] = cls


def registered_tasks() -> list[str]:
    return sorted(_TASKS)


def resolve_task(name: str) -> type[Task]:
    """The Task class registered as ``name``, or imported from ``"module:Class"``.

    Raises:
        ValueError: naming the allowed values when the name is unknown or does not import.
    """
    if name in _TASKS:
        return _TASKS[name]
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"task {name!r} does not import: {error}") from None
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise ValueError(f"task {name!r} is not a subclass of dp_gym.tasks.Task")
        return cls
    raise ValueError(f"unknown task {name!r}; registered: {registered_tasks()} or 'module:Class'")


def create_task(name: str, **kwargs: Any) -> Task:
    return resolve_task(name)(**kwargs)
