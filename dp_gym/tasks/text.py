"""Causal-LM fine-tuning on private text: the default task."""

from __future__ import annotations

import inspect
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dp_gym.data.clinical_notes import clinical_notes, make_canaries, private_train_records
from dp_gym.data.proxy_corpora import PROXY_CORPORA
from dp_gym.models.local import load_local, load_local_tokenizer
from dp_gym.models.lora import apply_lora
from dp_gym.models.spec import ModelSpec
from dp_gym.models.tiny_lm import TinyLMConfig, ensure_tiny_lm
from dp_gym.tasks.base import Batch, EncodedTrainSplit, Task, register_task, trim_padding


def _check_selection_records(selection: list[str], train: list[str], val: list[str]) -> None:
    """Given selection records must be public and held out: a record shared with the training split
    would let the returned iterate be chosen by training data (not post-processing of the DP
    releases), and one shared with the validation split would bias the loss that reports it.

    Raises:
        ValueError: naming ``selection_records`` and the split it shares records with.
    """
    for name, split in (("train_records", train), ("val_records", val)):
        shared = set(selection) & set(split)
        if shared:
            raise ValueError(f"selection_records must be public records held out of {name}: {len(shared)} of them "
                             f"are in {name}")


def per_token_losses(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, T-1)`` next-token losses, zero on padding.

    ``position_ids`` are passed expanded to the batch: GPT-2 otherwise builds them with shape
    ``(1, T)``, its position embedding then sees a batch of one, and Opacus silently gives the
    *summed* gradient to sample 0 (Opacus issue #841).
    """
    size, length = input_ids.shape
    position_ids = torch.arange(length, device=input_ids.device).unsqueeze(0).expand(size, length)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    # Shift the targets, not the logits: slicing logits[:, :-1] makes autograd materialize a
    # full-size zero tensor, and a (B, V, T) view makes log-softmax run over a strided axis.
    # Position t predicts token t+1; the last position has no target and is dropped after the loss.
    targets = torch.roll(input_ids, shifts=-1, dims=1)
    losses = F.cross_entropy(logits.reshape(size * length, -1), targets.reshape(-1), reduction="none")
    mask = attention_mask[:, 1:].to(logits.dtype)
    return losses.view(size, length)[:, :-1] * mask


class TextTask(EncodedTrainSplit, Task):
    """Fine-tune a causal LM on private records; evaluate on public held-out records.

    Args:
        model: ``"tiny"`` (the cached tiny GPT-2 pre-trained on public text), a local folder any
            ``AutoModelForCausalLM.from_pretrained`` loads (with its tokenizer), or a mapping
            ``{path, dtype, lora: {r, alpha, dropout, target_modules}}``
            (:class:`dp_gym.models.spec.ModelSpec`; with ``lora`` only the adapters train).
        n_train: private training records.
        n_val: public validation records (same distribution, disjoint: another seed, declared
            public).
        max_length: tokens per record (longer records are truncated).
        n_canaries, canary_repeats: canaries inserted into the private split.
        seed: data seed.
        tiny: shape of the tiny model when ``model == "tiny"``.
        train_records, val_records: your own private training records and public validation
            records (then ``n_train``, ``n_val`` and the canaries are not used).
        public_train_records: public records of the same kind as your private ones, for the task's
            public proxy (:meth:`proxy` with ``corpus="user"``); never trained on here.
        n_select: public *selection* records (:meth:`evaluate_selection`: which iterate a run with
            ``returned_model: best_public`` returns), generated like the validation records from
            another seed and disjoint from them; 0 for none. Not used with your own
            ``val_records``: give ``selection_records`` then.
        selection_records: your own public selection records (never trained on, never validated on).
    """

    def __init__(
        self,
        model: str | dict[str, Any] = "tiny",
        n_train: int = 512,
        n_val: int = 64,
        max_length: int = 96,
        n_canaries: int = 0,
        canary_repeats: int = 1,
        seed: int = 0,
        tiny: dict[str, Any] | None = None,
        train_records: list[str] | None = None,
        val_records: list[str] | None = None,
        public_train_records: list[str] | None = None,
        n_select: int = 64,
        selection_records: list[str] | None = None,
    ):
        if n_train < 1 or n_val < 1:
            raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
        if n_select < 0:
            raise ValueError(f"n_select must be >= 0, got {n_select}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.model_spec = ModelSpec.parse(model)
        self.model_path = ensure_tiny_lm(TinyLMConfig(**(tiny or {}))) if self.model_spec.is_tiny \
            else Path(self.model_spec.path)
        self.tokenizer = load_local_tokenizer(self.model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_length = max_length
        self.canaries = make_canaries(n_canaries, canary_repeats, seed) if n_canaries else []
        self.seed = seed
        #: the private split is the generated clinical notes (so fresh non-members can be drawn)
        self.generated_data = train_records is None
        if train_records is None:
            train_records = private_train_records(n_train, seed=1000 + seed, canaries=self.canaries)
        given_selection = selection_records is not None
        if val_records is None:
            val_records = clinical_notes(n_val, seed=2000 + seed)
            if selection_records is None and n_select:
                # declared public like the validation split, from a third seed (fixed before any
                # private record is seen); one that happens to equal a validation record is dropped
                validation = set(val_records)
                selection_records = [r for r in clinical_notes(n_select, seed=3000 + seed) if r not in validation]
        if not train_records or not val_records:
            raise ValueError("train_records and val_records must not be empty")
        if given_selection:
            _check_selection_records(selection_records, train_records, val_records)
        self.train_records, self.val_records = list(train_records), list(val_records)
        self.public_train_records = list(public_train_records) if public_train_records is not None else None
        self.selection_records = list(selection_records) if selection_records else None
        self._train = self._encode(self.train_records)
        self._val = self._encode(self.val_records)
        self._selection = self._encode(self.selection_records) if self.selection_records else None

    @classmethod
    def proxy_corpora(cls, task_kwargs: dict[str, Any]) -> tuple[str, ...]:
        """Public corpora the base model was not trained on, as the private data: clinical-like notes
        of other templates and vocabularies, and public scene captions; CPython's help topics too for
        a checkpoint of your own (give ``proxy.corpora`` if it was trained on them).

        Never the base model's pre-training text: the built-in tiny model is pre-trained on CPython's
        help topics, so DP fine-tuning on them has nothing to learn and every step hurts (validation
        perplexity 82 before, 93 / 129 / 301 after 200 updates at learning rates 1.25e-3 / 2.5e-3 /
        5e-3, where on public notes it falls from 198 to 40 / 26 / 29). Such proxies teach every
        controller tuned or trained on them to take small steps, which the private data punishes.
        """
        spec = ModelSpec.parse(task_kwargs.get("model", "tiny"))
        if not spec.is_tiny:
            return ("public_notes", "python_docs", "scene_captions")
        if TinyLMConfig(**(task_kwargs.get("tiny") or {})).public_captions:
            return ("public_notes",)
        return ("public_notes", "scene_captions")

    @classmethod
    def proxy(cls, task_kwargs: dict[str, Any], corpus: str = "public_notes", n_train: int = 256, n_val: int = 32,
              seed: int = 0, n_select: int = 0) -> TextTask:
        """A public proxy: the same model and tokenizer, trained on a public corpus instead of the
        private records (no private record is read).

        Args:
            task_kwargs: the deployment task's keyword arguments (its model, tiny shape and record
                length are kept; its records are not touched).
            corpus: a name in :data:`dp_gym.data.proxy_corpora.PROXY_CORPORA`, or ``"user"`` for the
                deployment task's ``public_train_records``.
            n_train, n_val: proxy training and validation records (validation: held out of the corpus).
            seed: which public records.
            n_select: public selection records, held out of the corpus after the validation ones
                (the built-in corpora are prefix-stable, so training and validation records are the
                same with or without them).

        Raises:
            ValueError: for ``"user"`` without public records, or an unknown corpus.
        """
        kept = {key: task_kwargs[key] for key in ("model", "max_length", "tiny") if key in task_kwargs}
        if corpus == "user":
            records = list(task_kwargs.get("public_train_records") or [])
            if len(records) < 2:
                raise ValueError("corpus 'user' needs public_train_records (at least 2) in the task's task_kwargs")
            random.Random(f"user-proxy/{seed}").shuffle(records)
            n_val = max(1, min(n_val, len(records) // 4))
            n_select = min(n_select, len(records) // 4)
            train, val = records[n_val + n_select:], records[:n_val]
            selection = records[n_val:n_val + n_select]
        else:
            records = PROXY_CORPORA.get(corpus)(n_train + n_val + n_select, seed)
            train, val, selection = records[:n_train], records[n_train:n_train + n_val], records[n_train + n_val:]
        # a subclass with a constructor of its own (no records) gets a plain TextTask of its model:
        # override proxy() if its loss or data handling differ from TextTask's
        parameters = set(inspect.signature(cls.__init__).parameters)
        builder = cls if {"train_records", "val_records"} <= parameters else TextTask
        # public records may repeat in a templated corpus: the selection split keeps the held-out ones
        held = set(train) | set(val)
        selection = [r for r in selection if r not in held]
        if selection and (builder is TextTask or "selection_records" in parameters):
            kept["selection_records"] = selection
        task = builder(**kept, train_records=train, val_records=val)
        task.public_training_data = True
        return task

    def nonmember_records(self, n: int) -> list[str]:
        """``n`` records from the private distribution that are not in the training split (fresh
        notes from a disjoint seed): the non-members of membership inference."""
        if not self.generated_data:
            raise ValueError("this task was given its own train_records; pass non-member records explicitly")
        members = set(self.train_records)
        return [r for r in clinical_notes(n, seed=7000 + self.seed) if r not in members]

    def member_records(self) -> list[str]:
        """The private training records that are not canaries."""
        canary_texts = {c.text for c in self.canaries}
        return [r for r in self.train_records if r not in canary_texts]

    def _encode(self, records: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            records, max_length=self.max_length, truncation=True, padding="max_length", return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        model = load_local(AutoModelForCausalLM, self.model_path, dtype=self.model_spec.torch_dtype())
        if self.model_spec.lora is not None:
            model = apply_lora(model, self.model_spec.lora)
        model.train()
        return model

    def per_sample_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        losses = per_token_losses(model, batch["input_ids"], batch["attention_mask"])
        tokens = batch["attention_mask"][:, 1:].sum(dim=1).clamp(min=1)
        return losses.sum(dim=1) / tokens

    def evaluate(self, model: nn.Module, batch_size: int = 128) -> float:
        return self._mean_token_loss(model, self._val, batch_size)

    @property
    def has_selection_split(self) -> bool:
        return self._selection is not None

    def evaluate_selection(self, model: nn.Module, batch_size: int = 128) -> float:
        if self._selection is None:
            raise NotImplementedError("this TextTask has no public selection split: give selection_records (with "
                                      "your own val_records) or n_select > 0")
        return self._mean_token_loss(model, self._selection, batch_size)

    @torch.no_grad()
    def _mean_token_loss(self, model: nn.Module, split: dict[str, torch.Tensor], batch_size: int) -> float:
        """Mean next-token loss per token over a public split."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, tokens = 0.0, 0.0
        for start in range(0, split["input_ids"].shape[0], batch_size):
            chunk = trim_padding({k: v[start : start + batch_size] for k, v in split.items()})
            ids, mask = chunk["input_ids"].to(device), chunk["attention_mask"].to(device)
            total += float(per_token_losses(model, ids, mask).sum())
            tokens += float(mask[:, 1:].sum())
        model.train(was_training)
        return total / max(tokens, 1.0)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": str(self.model_path),
            **({"lora": asdict(self.model_spec.lora)} if self.model_spec.lora else {}),
            "n_val": len(self.val_records),
            "n_select": len(self.selection_records or []),
            "max_length": self.max_length,
            "n_canaries": len(self.canaries),
        }



register_task("text", TextTask)
