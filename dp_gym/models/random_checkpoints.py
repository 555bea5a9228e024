"""Randomly initialized checkpoints of real architectures (GPT-2, Llama, Mistral), saved locally.

``llava`` is LLaVA-1.5's layout (CLIP tower, 576 patch tokens, MLP projector, Llama LM).
They have the real module classes (``Conv1D`` attention in GPT-2; ``nn.Linear`` projections,
``LlamaRMSNorm``, rotary position embeddings and grouped-query attention in Llama and Mistral) at a
size small enough for per-example gradient loops on a CPU. Tests and examples point the real-model
presets (``dp_gym/GPT2LoRA-v0``, ``dp_gym/LlamaLoRA-v0``) at them instead of a downloaded model; a
user points the same presets at their own checkpoint folder.

    python -m dp_gym.models.random_checkpoints llama /tmp/llama-tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dp_gym.models.tiny_lm import save_to_cache, train_public_tokenizer

ARCHITECTURES = ("gpt2", "llama", "mistral", "llava")


def architecture_config(architecture: str, vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                        kv_heads: int = 2, positions: int = 256, tie_word_embeddings: bool | None = None):
    """The ``transformers`` config of a small model of ``architecture`` (token 0: BOS, EOS, padding).

    Llama and Mistral use grouped-query attention (``kv_heads`` < ``heads``) and untied embeddings
    by default, as their released checkpoints do; GPT-2 ties them.
    """
    from transformers import GPT2Config, LlamaConfig, MistralConfig

    special = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    if architecture == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=positions, n_embd=hidden, n_layer=layers, n_head=heads,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          tie_word_embeddings=True if tie_word_embeddings is None else tie_word_embeddings, **special)
    common = {"vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
              "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "max_position_embeddings": positions,
              "tie_word_embeddings": False if tie_word_embeddings is None else tie_word_embeddings, **special}
    if architecture == "llama":
        return LlamaConfig(**common)
    if architecture == "mistral":
        return MistralConfig(sliding_window=None, **common)
    if architecture == "llava":
        return llava_config(LlamaConfig(**common), hidden)
    raise ValueError(f"architecture must be one of {list(ARCHITECTURES)}, got {architecture!r}")


def llava_config(text_config, hidden: int, image_size: int = 336, patch_size: int = 14):
    """LLaVA-1.5's layout: a CLIP tower on 336 x 336 images in 14 x 14 patches (576 patch tokens),
    a two-layer MLP projector, a Llama language model (small widths)."""
    from transformers import CLIPVisionConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1, num_attention_heads=4,
                              image_size=image_size, patch_size=patch_size, num_channels=3, projection_dim=hidden)
    return LlavaConfig(vision_config=vision, text_config=text_config, image_token_id=text_config.vocab_size - 1,
                       vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
                       tie_word_embeddings=False)


def save_random_checkpoint(architecture: str, folder: str | Path, *, vocab_size: int = 512, seed: int = 0,
                           **shape) -> Path:
    """Save a random-init ``architecture`` model and a public BPE tokenizer into ``folder``.

    ``shape``: keyword arguments of :func:`architecture_config`. Returns the folder, which
    ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` then load.
    """
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    folder = Path(folder)
    if (folder / "config.json").exists():
        raise FileExistsError(f"{folder} already holds a checkpoint")
    tokenizer = train_public_tokenizer(vocab_size)
    config = architecture_config(architecture, len(tokenizer), **shape)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config) if architecture == "llava" else AutoModelForCausalLM.from_config(config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return save_to_cache(model, tokenizer, folder, {"architecture": architecture, "random_init": True, "seed": seed})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="save a small random-init checkpoint of a real architecture")
    parser.add_argument("architecture", choices=ARCHITECTURES, help="model family")
    parser.add_argument("folder", help="where to save it (must not hold a checkpoint yet)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size (default: 64)")
    parser.add_argument("--layers", type=int, default=2, help="blocks (default: 2)")
    parser.add_argument("--positions", type=int, default=256,
                        help="positions of the language model (default: 256; llava needs 576 + text)")
    args = parser.parse_args(argv)
    print(save_random_checkpoint(args.architecture, args.folder, hidden=args.hidden, layers=args.layers,
                                 positions=args.positions))


if __name__ == "__main__":
    main()
