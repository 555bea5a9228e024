"""Image captioning with a LLaVA-style model whose visual tokens are pruned before the LM.

Per example: the frozen vision tower encodes the image into ``n`` patch tokens; a pruning rule
keeps ``k = ceil(keep_ratio * n)`` of them (a function of that example alone, see
:mod:`dp_gym.models.token_pruning`); the trainable projector maps them into the LM's embedding
space; the LM reads ``[k visual tokens, caption tokens]`` and is trained to predict the caption.
The loss of an example is its mean next-token loss over caption tokens: the first caption token
is predicted from the last visual token.

Trainable under DP by default: the projector, every LM block and the head (final norm and
``lm_head``). The vision tower and the LM's input embeddings are frozen.

A frozen vision tower maps each image to the same features at every step, so they are computed
once per image when the task is built (``cache_vision_features``, on by default; as LLaVA-style
pipelines with a frozen encoder do): a DP step then runs pruning, the projector and the LM only.
The features are a function of one image each, so this changes no per-example computation. They
are the tower of the task's own checkpoint: a model whose vision tower differs (one fine-tuned
with ``train_vision=True``) must be scored by a task built with ``cache_vision_features=False``.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dp_gym.config import parse_token_pruning as parse_config_token_pruning
from dp_gym.data.digits import digit_selection, digit_splits
from dp_gym.data.patterns import make_patterns
from dp_gym.data.scenes import PRIVATE_SEED, PUBLIC_SELECTION_SEED, PUBLIC_VALIDATION_SEED, make_scenes
from dp_gym.models.local import load_local, load_local_tokenizer
from dp_gym.models.lora import apply_lora
from dp_gym.models.spec import ModelSpec
from dp_gym.models.tiny_vlm import TinyLMConfig, TinyVLMConfig, ensure_tiny_vlm, images_to_pixels
from dp_gym.models.token_pruning import (
    check_rule,
    cls_attention_scores,
    needs_cls_attention,
    prune_visual_tokens,
    tokens_kept,
)
from dp_gym.tasks.base import Batch, EncodedTrainSplit, Task, register_task, trim_padding

DATASETS = ("scenes", "digits", "patterns")
#: the public corpora a proxy trains on (never the deployment's own dataset; never the scene generator)
PROXY_CORPORA = ("patterns", "digits")
#: keyword arguments a proxy keeps from its deployment task (the model and how it reads images)
PROXY_KEPT = ("model", "token_pruning", "max_text_length", "tiny", "train_vision", "cache_vision_features")


def parse_token_pruning(token_pruning: dict[str, Any] | None) -> tuple[str, float]:
    """:func:`dp_gym.config.parse_token_pruning`, plus the check that the rule is registered (or imports).

    Raises:
        ValueError: naming ``token_pruning.rule`` / ``token_pruning.keep_ratio`` / unknown keys.
    """
    rule, keep_ratio = parse_config_token_pruning(token_pruning)
    return check_rule(rule, "token_pruning.rule"), keep_ratio


class VisionLanguageTask(EncodedTrainSplit, Task):
    """Fine-tune a LLaVA on private captioned images; evaluate on public ones.

    Args:
        model: ``"tiny"`` (the cached tiny LLaVA), a folder that
            ``LlavaForConditionalGeneration.from_pretrained`` and ``AutoTokenizer`` load, or a
            mapping ``{path, dtype, lora}`` (:class:`dp_gym.models.spec.ModelSpec`; with ``lora``
            only the adapters train: add the projector's ``linear_1``/``linear_2`` to
            ``target_modules`` to adapt it too).
        dataset: ``"scenes"`` (generated shapes), ``"digits"`` (scikit-learn's digits) or
            ``"patterns"`` (generated textile patterns, :mod:`dp_gym.data.patterns`: the public
            corpus of the proxies).
        n_train, n_val: private training and public validation examples.
        n_select: public *selection* examples (:meth:`evaluate_selection`: which iterate a run with
            ``returned_model: best_public`` returns), disjoint from both splits: scenes from their
            own seed, the digits between the training and the validation images, patterns after
            the validation ones; 0 for none.
        token_pruning: ``{"rule": name, "keep_ratio": r}``; ``None`` keeps every visual token.
        max_text_length: caption tokens (longer captions are truncated).
        seed: data seed (and the seed of the ``random`` pruning rule).
        tiny: shape of the tiny model (``TinyVLMConfig`` fields) when ``model == "tiny"``.
        train_vision: also fine-tune the vision tower (off by default, as in LLaVA).
        cache_vision_features: with a frozen tower, encode every image once up front (its
            last-layer features and, for ``cls_attention``, the [CLS] attention scores).
    """

    def __init__(
        self,
        model: str | dict[str, Any] = "tiny",
        dataset: str = "scenes",
        n_train: int = 512,
        n_val: int = 64,
        token_pruning: dict[str, Any] | None = None,
        max_text_length: int = 48,
        seed: int = 0,
        tiny: dict[str, Any] | None = None,
        train_vision: bool = False,
        cache_vision_features: bool = True,
        n_select: int = 64,
    ):
        from transformers import AutoConfig

        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
        if n_train < 1 or n_val < 1:
            raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
        if n_select < 0:
            raise ValueError(f"n_select must be >= 0, got {n_select}")
        self.rule, self.keep_ratio = parse_token_pruning(token_pruning)
        self.model_spec = ModelSpec.parse(model)
        if self.model_spec.is_tiny:
            tiny = dict(tiny or {})
            if "lm" in tiny and isinstance(tiny["lm"], dict):
                tiny["lm"] = TinyLMConfig(**tiny["lm"])
            self.model_path = ensure_tiny_vlm(TinyVLMConfig(**tiny))
        else:
            self.model_path = Path(self.model_spec.path)
        self.tokenizer = load_local_tokenizer(self.model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model_config = load_local(AutoConfig, self.model_path)
        vision = self.model_config.vision_config
        self.image_size = vision.image_size
        self.dataset, self.seed, self.train_vision = dataset, seed, train_vision
        self.max_text_length = max_text_length
        if dataset == "scenes":
            train = [(s.image, s.caption) for s in make_scenes(n_train, PRIVATE_SEED + seed, self.image_size)]
            val = [(s.image, s.caption) for s in make_scenes(n_val, PUBLIC_VALIDATION_SEED + seed, self.image_size)]
            selection = [(s.image, s.caption) for s in make_scenes(n_select, PUBLIC_SELECTION_SEED + seed,
                                                                   self.image_size)]
        elif dataset == "digits":
            train, val = digit_splits(n_train, n_val, seed=seed, image_size=self.image_size)
            selection = digit_selection(n_train, n_val, n_select, seed=seed, image_size=self.image_size)
        else:  # (prefix-stable: the same training and validation patterns with or without a selection)
            pairs = make_patterns(n_train + n_val + n_select, seed, self.image_size)
            train, val, selection = pairs[:n_train], pairs[n_train:n_train + n_val], pairs[n_train + n_val:]
        positions = getattr(self.model_config.text_config, "max_position_embeddings", None)
        if positions is not None and self.visual_tokens + max_text_length > positions:
            raise ValueError(f"{self.visual_tokens} visual tokens + max_text_length {max_text_length} exceed the "
                             f"language model's {positions} positions; prune more or shorten the captions")
        self.train_captions = [caption for _, caption in train]
        self.val_captions = [caption for _, caption in val]
        self._train = self._encode(train)
        self._val = self._encode(val)
        self._selection = self._encode(selection) if selection else None
        self._random = torch.Generator().manual_seed(seed)
        self.caches_vision_features = cache_vision_features and not train_vision
        self._tower_fingerprint: torch.Tensor | None = None
        self._matching_towers: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        if self.caches_vision_features:
            tower = self.build_model().model.vision_tower
            self._tower_fingerprint = _fingerprint(tower)
            for split in (self._train, self._val, self._selection):
                if split is not None:
                    split.update(self._encode_images(tower, split["pixel_values"]))

    @classmethod
    def proxy_corpora(cls, task_kwargs: dict[str, Any]) -> tuple[str, ...]:
        """Generated textile patterns and scikit-learn's digits, less the deployment's own dataset."""
        return tuple(corpus for corpus in PROXY_CORPORA if corpus != task_kwargs.get("dataset", "scenes"))

    @classmethod
    def proxy(cls, task_kwargs: dict[str, Any], corpus: str = "patterns", n_train: int = 256, n_val: int = 32,
              seed: int = 0, n_select: int = 0) -> VisionLanguageTask:
        """A public proxy: the same LLaVA (model, token pruning, caption length), trained on a public
        image-caption corpus instead of the private split; no private image or caption is read.

        Args:
            task_kwargs: the deployment task's keyword arguments (its data is not touched).
            corpus: ``"patterns"`` or ``"digits"``, but not the deployment's own dataset.
            n_train, n_val: proxy training and validation examples.
            seed: which public examples.
            n_select: public selection examples of the same corpus (0: none).

        Raises:
            ValueError: for another corpus, or the deployment's own dataset.
        """
        own = task_kwargs.get("dataset", "scenes")
        if corpus not in PROXY_CORPORA:
            raise ValueError(f"a vision proxy trains on one of {list(PROXY_CORPORA)}, got {corpus!r}")
        if corpus == own:
            raise ValueError(f"corpus {corpus!r} is the deployment's own dataset: a proxy must train on other, "
                             "public data")
        kept = {key: task_kwargs[key] for key in PROXY_KEPT if key in task_kwargs}
        task = cls(**kept, dataset=corpus, n_train=n_train, n_val=n_val, seed=seed, n_select=n_select)
        task.public_training_data = True
        return task

    def _encode(self, pairs) -> dict[str, torch.Tensor]:
        captions = [caption + self.tokenizer.eos_token for _, caption in pairs]
        encoded = self.tokenizer(
            captions, max_length=self.max_text_length, truncation=True, padding="max_length", return_tensors="pt"
        )
        return {
            "pixel_values": images_to_pixels([image for image, _ in pairs]),
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
        }

    @property
    def visual_tokens(self) -> int:
        """Visual tokens the LM sees per example after pruning."""
        vision = self.model_config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        kept = tokens_kept(patches, self.keep_ratio)
        return kept + (1 if self.model_config.vision_feature_select_strategy == "full" else 0)

    def build_model(self) -> nn.Module:
        from transformers import LlavaForConditionalGeneration

        # eager attention in the vision tower: the cls_attention rule reads its probabilities
        model = load_local(
            LlavaForConditionalGeneration, self.model_path, dtype=self.model_spec.torch_dtype(),
            attn_implementation={"vision_config": "eager", "text_config": "sdpa", "": "sdpa"}
        )
        for parameter in model.model.vision_tower.parameters():
            parameter.requires_grad_(self.train_vision)
        for parameter in model.model.language_model.get_input_embeddings().parameters():
            parameter.requires_grad_(False)
        position = getattr(model.model.language_model, "wpe", None)
        if position is not None:
            position.weight.requires_grad_(False)
        if self.model_spec.lora is not None:
            # the tower is frozen and its features cached: never adapt its q_proj/v_proj (same names as the LM's)
            model = apply_lora(model, self.model_spec.lora, exclude=None if self.train_vision else r".*vision_tower.*")
        model.train()
        return model

    def _vision_outputs(self, tower: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(hidden (B, 1 + n, D_v), [CLS] attention (B, n) or None)`` of the vision tower."""
        wants_attention = needs_cls_attention(self.rule)
        outputs = tower(pixel_values, output_hidden_states=True, output_attentions=wants_attention, return_dict=True)
        hidden = outputs.hidden_states[self.model_config.vision_feature_layer]
        return hidden, cls_attention_scores(outputs.attentions[-1]) if wants_attention else None

    @torch.no_grad()
    def _encode_images(self, tower: nn.Module, pixel_values: torch.Tensor, chunk: int = 256) -> dict[str, torch.Tensor]:
        """The frozen tower's outputs for every image, as extra batch tensors."""
        hidden, attention = [], []
        for start in range(0, pixel_values.shape[0], chunk):
            features, scores = self._vision_outputs(tower, pixel_values[start : start + chunk])
            hidden.append(features)
            attention.append(scores)
        cached = {"vision_features": torch.cat(hidden)}
        if attention[0] is not None:
            cached["cls_attention"] = torch.cat(attention)
        return cached

    def _check_tower(self, tower: nn.Module) -> None:
        """Cached features are only valid for the tower they came from (checked once per tower object)."""
        if tower in self._matching_towers:
            return
        if self._tower_fingerprint is None or not torch.equal(_fingerprint(tower), self._tower_fingerprint):
            raise ValueError("this model's vision tower is not the one the task cached features from; build the "
                             "task with cache_vision_features=False to score it")
        self._matching_towers.add(tower)

    def visual_embeddings(self, model: nn.Module, batch: Batch | torch.Tensor) -> torch.Tensor:
        """``(B, k, D_lm)``: encode (or read the cached features), prune each example's patches, project."""
        llava = model
        config = llava.config
        if not isinstance(batch, torch.Tensor) and "vision_features" in batch:
            self._check_tower(llava.model.vision_tower)
            hidden, attention = batch["vision_features"], batch.get("cls_attention")
        else:
            pixel_values = batch if isinstance(batch, torch.Tensor) else batch["pixel_values"]
            with torch.set_grad_enabled(self.train_vision and torch.is_grad_enabled()):
                hidden, attention = self._vision_outputs(llava.model.vision_tower, pixel_values)
        with torch.set_grad_enabled(self.train_vision and torch.is_grad_enabled()):
            patches = prune_visual_tokens(hidden[:, 1:], self.rule, self.keep_ratio, attention, self._random)
            if config.vision_feature_select_strategy == "full":
                patches = torch.cat([hidden[:, :1], patches], dim=1)
        return llava.model.multi_modal_projector(patches)

    def caption_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``(B, T)`` next-token losses of the caption tokens, zero on padding."""
        llava = model
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        visual = self.visual_embeddings(model, batch)
        text = llava.get_input_embeddings()(input_ids)
        size, kept, length = visual.shape[0], visual.shape[1], input_ids.shape[1]
        embeds = torch.cat([visual, text.to(visual.dtype)], dim=1)
        full_mask = torch.cat([torch.ones(size, kept, dtype=mask.dtype, device=mask.device), mask], dim=1)
        # expanded position ids: see per_token_losses (Opacus #841)
        positions = torch.arange(kept + length, device=mask.device).unsqueeze(0).expand(size, kept + length)
        # logits only where a caption token is predicted: positions kept-1 .. kept+length-1
        # (position kept-1+j predicts caption token j); the head never runs on visual positions
        logits = llava(
            inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions, logits_to_keep=length + 1
        ).logits
        predictions = logits[:, :length]
        losses = F.cross_entropy(predictions.reshape(size * length, -1), input_ids.reshape(-1), reduction="none")
        return losses.view(size, length) * mask.to(losses.dtype)

    def per_sample_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        losses = self.caption_losses(model, batch)
        return losses.sum(dim=1) / batch["attention_mask"].sum(dim=1).clamp(min=1)

    def evaluate(self, model: nn.Module, batch_size: int = 128) -> float:
        return self._mean_caption_loss(model, self._val, batch_size, stream=1)

    @property
    def has_selection_split(self) -> bool:
        return self._selection is not None

    def evaluate_selection(self, model: nn.Module, batch_size: int = 128) -> float:
        if self._selection is None:
            raise NotImplementedError("this VisionLanguageTask has no public selection split: give n_select > 0")
        return self._mean_caption_loss(model, self._selection, batch_size, stream=2)

    @torch.no_grad()
    def _mean_caption_loss(self, model: nn.Module, split: dict[str, torch.Tensor], batch_size: int,
                           stream: int) -> float:
        """Mean caption loss per token over a public split. The ``random`` pruning rule draws from a
        generator of this evaluation's own (``stream``), never from the training updates' one: how
        often a run is evaluated (``returned_model: best_public`` adds the selection split) does
        not change its training, and a split scores the same model the same every time."""
        was_training, training_random = model.training, self._random
        self._random = torch.Generator().manual_seed(1_000_003 * stream + self.seed)
        model.eval()
        device = next(model.parameters()).device
        total, tokens = 0.0, 0.0
        try:
            for start in range(0, split["input_ids"].shape[0], batch_size):
                chunk = trim_padding({k: v[start : start + batch_size].to(device) for k, v in split.items()})
                total += float(self.caption_losses(model, chunk).sum())
                tokens += float(chunk["attention_mask"].sum())
        finally:
            model.train(was_training)
            self._random = training_random
        return total / max(tokens, 1.0)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": str(self.model_path),
            **({"lora": asdict(self.model_spec.lora)} if self.model_spec.lora else {}),
            "dataset": self.dataset,
            "n_val": int(self._val["input_ids"].shape[0]),
            "n_select": 0 if self._selection is None else int(self._selection["input_ids"].shape[0]),
            "token_pruning": {"rule": self.rule, "keep_ratio": self.keep_ratio},
            "visual_tokens": self.visual_tokens,
            "vision_features_cached": self.caches_vision_features,
        }


def _fingerprint(module: nn.Module) -> torch.Tensor:
    """Per-parameter sums and absolute sums: equal for the same weights, different after any update."""
    with torch.no_grad():
        return torch.stack([torch.stack([p.sum(), p.abs().sum()]) for p in module.parameters()]).cpu()


register_task("vision", VisionLanguageTask)
