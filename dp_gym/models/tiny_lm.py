"""The tiny default causal LM: a GPT-2 built from a config, pre-trained briefly on public text.

The base model is produced once per configuration and cached under ``$DP_GYM_CACHE`` (default
``~/.cache/dp_gym``) as an ordinary ``save_pretrained`` folder, and every user of it loads it
back with ``AutoModelForCausalLM.from_pretrained(path)``: the same code path that loads any
real checkpoint. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dp_gym.data.public_corpus import public_paragraphs


@dataclass(frozen=True)
class TinyLMConfig:
    """Shape of the tiny GPT-2 and of its brief public pre-training.

    The defaults give about 0.5M parameters and pre-train in seconds on 2 CPU cores.
    """

    vocab_size: int = 1024
    n_layer: int = 3
    n_embd: int = 96
    n_head: int = 4
    n_positions: int = 128
    tie_word_embeddings: bool = True
    pretrain_steps: int = 200
    pretrain_batch_size: int = 32
    pretrain_seq_len: int = 64
    pretrain_lr: float = 3e-3
    seed: int = 0
    #: public generated scene captions added to the tokenizer and pre-training text (the tiny
    #: vision-language model's LM uses them, so it knows the words of captions; 0 for the text LM)
    public_captions: int = 0

    def cache_key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def cache_dir() -> Path:
    """``$DP_GYM_CACHE`` or ``~/.cache/dp_gym``."""
    return Path(os.environ.get("DP_GYM_CACHE", Path.home() / ".cache" / "dp_gym"))


def public_text(config: TinyLMConfig) -> list[str]:
    """The public pre-training text: Python help paragraphs, plus public scene captions if asked."""
    paragraphs = public_paragraphs()
    if config.public_captions:
        from dp_gym.data.scenes import PUBLIC_PRETRAINING_SEED, make_scenes

        scenes = make_scenes(config.public_captions, seed=PUBLIC_PRETRAINING_SEED + config.seed)
        paragraphs = paragraphs + [scene.caption for scene in scenes]
    return paragraphs


def train_public_tokenizer(vocab_size: int, texts: list[str] | None = None):
    """A byte-level BPE tokenizer trained on the public corpus (deterministic, about a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts if texts is not None else public_paragraphs(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def gpt2_config(config: TinyLMConfig, vocab_size: int | None = None, tie_word_embeddings: bool | None = None):
    """The ``GPT2Config`` of the given shape (no dropout; token 0 is BOS, EOS and padding)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size or config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=config.tie_word_embeddings if tie_word_embeddings is None else tie_word_embeddings,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def build_tiny_lm(config: TinyLMConfig, vocab_size: int | None = None):
    """A randomly initialized ``GPT2LMHeadModel`` of the given shape."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(config.seed)
    return GPT2LMHeadModel(gpt2_config(config, vocab_size))


def _pack_public_tokens(tokenizer, seq_len: int, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for paragraph in texts:
        ids.extend(tokenizer(paragraph)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    n_chunks = len(ids) // seq_len
    return torch.tensor(ids[: n_chunks * seq_len]).view(n_chunks, seq_len)


def pretrain_on_public(model, tokenizer, config: TinyLMConfig) -> list[float]:
    """Non-private pre-training on the public corpus; returns the loss curve."""
    generator = torch.Generator().manual_seed(config.seed)
    chunks = _pack_public_tokens(tokenizer, config.pretrain_seq_len, public_text(config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.pretrain_lr, total_steps=max(config.pretrain_steps, 1), pct_start=0.1
    )
    model.train()
    losses = []
    for _ in range(config.pretrain_steps):
        index = torch.randint(len(chunks), (config.pretrain_batch_size,), generator=generator)
        batch = chunks[index]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


def ensure_tiny_lm(config: TinyLMConfig | None = None, root: Path | None = None) -> Path:
    """The folder of the cached, publicly pre-trained tiny LM (built on first use).

    The folder holds ``save_pretrained`` output of both the model and its tokenizer, so
    ``AutoModelForCausalLM.from_pretrained(folder)`` and ``AutoTokenizer.from_pretrained(folder)``
    load it. Concurrent builders are safe: each writes to a temporary folder and renames it.
    """
    config = config or TinyLMConfig()
    root = Path(root) if root is not None else cache_dir()
    target = root / f"tiny-lm-{config.cache_key()}"
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = train_public_tokenizer(config.vocab_size, public_text(config))
    model = build_tiny_lm(config, vocab_size=len(tokenizer))
    losses = pretrain_on_public(model, tokenizer, config)
    return save_to_cache(model, tokenizer, target,
                         {"config": asdict(config), "final_public_loss": losses[-1] if losses else None})


def save_to_cache(model, tokenizer, target: Path, metadata: dict) -> Path:
    """``save_pretrained`` model and tokenizer into ``target`` atomically: written to a temporary
    sibling folder, then renamed (a concurrent builder's identical copy may win the race)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "dp_gym_pretraining.json").write_text(json.dumps(metadata))
    try:
        staging.rename(target)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target
