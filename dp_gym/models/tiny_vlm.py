"""The tiny default vision-language model: a LLaVA built from ``transformers`` configs.

``LlavaForConditionalGeneration`` with a small CLIP vision tower (48x48 images, 4x4 patches:
144 patch tokens plus [CLS]), a two-layer MLP projector, and the tiny GPT-2 as its language
model. As in a real LLaVA (576 visual tokens against a few dozen text tokens), the visual tokens
outnumber a caption's (at most about 17) many times over: the regime visual-token pruning is for. The vision tower is pre-trained briefly on *public* generated scenes (predict the
background colour, the colours and the shapes present from [CLS]); the language model starts
from the cached tiny LM (pre-trained on public text and public scene captions); the projector starts random. The result is
saved once per configuration under ``$DP_GYM_CACHE`` with ``save_pretrained`` (model and
tokenizer, with an ``<image>`` token added) and loaded back with ``from_pretrained``: the code
path that loads a real LLaVA checkpoint.

GPT-2's input and output embeddings are untied in the LLaVA (LLaVA's weight tying names a Llama
``embed_tokens``); both start from the tiny LM's tied matrix.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dp_gym.data.scenes import COLOURS, PUBLIC_PRETRAINING_SEED, SHAPES, Scene, make_scenes
from dp_gym.models.local import load_local, load_local_tokenizer
from dp_gym.models.tiny_lm import TinyLMConfig, cache_dir, ensure_tiny_lm, gpt2_config, save_to_cache

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class TinyVLMConfig:
    """Shape of the tiny LLaVA and of its vision tower's brief public pre-training."""

    image_size: int = 48
    patch_size: int = 4
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    pretrain_steps: int = 300
    pretrain_batch_size: int = 64
    pretrain_images: int = 2048
    pretrain_lr: float = 3e-3
    seed: int = 0
    #: the LM also pre-trains on public scene captions, over 192-token chunks: visual tokens come
    #: first, so caption tokens sit at positions 144 and beyond, and the position embeddings stay
    #: frozen under DP (they must be trained there already)
    lm: TinyLMConfig = field(default_factory=lambda: TinyLMConfig(public_captions=4000, pretrain_seq_len=192,
                                                                  n_positions=256))

    def cache_key(self) -> str:
        import hashlib

        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def images_to_pixels(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float in [-1, 1]."""
    array = np.stack(list(images)).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def scene_attributes(scene: Scene) -> np.ndarray:
    """Multi-label targets of the public pre-training: background colour, colours present, shapes present."""
    colours = list(COLOURS)
    target = np.zeros(2 * len(colours) + len(SHAPES), dtype=np.float32)
    target[colours.index(scene.background)] = 1.0
    for colour, shape in scene.shapes:
        target[len(colours) + colours.index(colour)] = 1.0
        target[2 * len(colours) + SHAPES.index(shape)] = 1.0
    return target


def build_tiny_vlm(config: TinyVLMConfig, vocab_size: int):
    """A randomly initialized ``LlavaForConditionalGeneration`` of the given shape."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(config.seed)
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden,
        intermediate_size=4 * config.vision_hidden,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=3,
        projection_dim=config.vision_hidden,
    )
    text = gpt2_config(config.lm, vocab_size, tie_word_embeddings=False)
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab_size - 1,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    return LlavaForConditionalGeneration(llava)


def pretrain_vision_on_public(vision_tower, config: TinyVLMConfig) -> list[float]:
    """Non-private multi-label pre-training of the vision tower on public scenes; returns losses."""
    scenes = make_scenes(config.pretrain_images, seed=PUBLIC_PRETRAINING_SEED + config.seed, image_size=config.image_size)
    pixels = images_to_pixels([s.image for s in scenes])
    targets = torch.from_numpy(np.stack([scene_attributes(s) for s in scenes]))
    head = torch.nn.Linear(config.vision_hidden, targets.shape[1])
    parameters = list(vision_tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.pretrain_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.pretrain_lr, total_steps=max(config.pretrain_steps, 1), pct_start=0.1
    )
    generator = torch.Generator().manual_seed(config.seed)
    vision_tower.train()
    losses = []
    for _ in range(config.pretrain_steps):
        index = torch.randint(len(scenes), (config.pretrain_batch_size,), generator=generator)
        pooled = vision_tower(pixels[index]).pooler_output
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(pooled), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vision_tower.eval()
    return losses


def _copy_language_model(llava, lm_path: Path) -> None:
    """Load the tiny LM into the LLaVA's language model and head (the ``<image>`` row: mean embedding)."""
    from transformers import AutoModelForCausalLM

    source = load_local(AutoModelForCausalLM, lm_path)
    state = {k.removeprefix("transformer."): v for k, v in source.state_dict().items() if k.startswith("transformer.")}
    embedding = state.pop("wte.weight")
    target = llava.model.language_model
    missing, unexpected = target.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"wte.weight"}:
        raise RuntimeError(f"tiny LM does not fit the LLaVA language model: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for matrix in (target.wte.weight, llava.lm_head.weight):
            matrix[: embedding.shape[0]] = embedding
            matrix[embedding.shape[0] :] = embedding.mean(dim=0)


def ensure_tiny_vlm(config: TinyVLMConfig | None = None, root: Path | None = None) -> Path:
    """The folder of the cached tiny LLaVA (built on first use, about a minute and a half on 2 cores).

    ``LlavaForConditionalGeneration.from_pretrained(folder)`` and
    ``AutoTokenizer.from_pretrained(folder)`` load it.
    """
    config = config or TinyVLMConfig()
    root = Path(root) if root is not None else cache_dir()
    target = root / f"tiny-vlm-{config.cache_key()}"
    if (target / "config.json").exists():
        return target
    lm_path = ensure_tiny_lm(config.lm, root=root)
    tokenizer = load_local_tokenizer(lm_path)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    model = build_tiny_vlm(config, vocab_size=len(tokenizer))
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != model.config.image_token_id:
        raise RuntimeError("the <image> token id does not match the model's image_token_id")
    _copy_language_model(model, lm_path)
    losses = pretrain_vision_on_public(model.model.vision_tower, config)
    root.mkdir(parents=True, exist_ok=True)
    return save_to_cache(model, tokenizer, target,
                         {"config": asdict(config), "final_public_vision_loss": losses[-1] if losses else None})
