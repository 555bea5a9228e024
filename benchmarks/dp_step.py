"""DP step cost: non-private vs dp-gym (per-group clip/noise/prune) vs Opacus stock flat clipping.

All measured side by side in one process, on the same batch, for the tiny default, a larger GPT-2
(6 layers, 256 wide, with tied and with untied output embeddings), a GPT-2-small-shaped model
(12 x 768, vocabulary 50257, tied; random weights, short sequences on CPU) and LoRA (r = 8 on
``c_attn``, ``c_proj``, ``c_fc``) on it. dp-gym runs twice: with book-kept layers (the default:
linear layers, embeddings and the tied embedding/head pair give norms and clipped sums without
per-sample gradients) and with every per-sample gradient materialized by Opacus' hooks. Prints one
table; ratios are what to read.

    python benchmarks/dp_step.py [--repeats 7] [--batch 32] [--seq 112] [--small-batch 8 --small-seq 32]
    python benchmarks/dp_step.py --only "gpt2-small"   # rows whose model name contains this
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import median_ms, memory_in_child, opacus_flat_step, peak_memory_mib  # noqa: E402

from dp_gym.engine import DPUpdater, ParameterGroups  # noqa: E402
from dp_gym.models.local import load_local  # noqa: E402
from dp_gym.models.lora import apply_lora  # noqa: E402
from dp_gym.models.spec import LoraSpec  # noqa: E402
from dp_gym.models.tiny_lm import TinyLMConfig, build_tiny_lm, ensure_tiny_lm  # noqa: E402
from dp_gym.privacy import ReleasedStatistics  # noqa: E402
from dp_gym.tasks.text import per_token_losses  # noqa: E402
from dp_gym.utils.threads import configure_threads  # noqa: E402

GPT2_SMALL = TinyLMConfig(vocab_size=50257, n_layer=12, n_embd=768, n_head=12, n_positions=1024)


def per_sample_loss(model, batch):
    losses = per_token_losses(model, batch["input_ids"], batch["attention_mask"])
    return losses.sum(dim=1) / batch["attention_mask"][:, 1:].sum(dim=1).clamp(min=1)


def make_batch(vocab: int, batch: int, seq: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1, vocab, (batch, seq), generator=generator),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def gpt2_small_lora():
    return apply_lora(build_tiny_lm(GPT2_SMALL), LoraSpec(r=8, alpha=16, target_modules=("c_attn", "c_proj", "c_fc")))


def models(args):
    """``(name, factory, batch)`` per model."""
    from transformers import AutoModelForCausalLM

    tiny_path = ensure_tiny_lm()
    small = make_batch(1024, args.batch, args.seq)
    yield "tiny (3x96)", lambda: load_local(AutoModelForCausalLM, tiny_path), small
    larger = TinyLMConfig(vocab_size=1024, n_layer=6, n_embd=256, n_head=8, n_positions=128)
    yield "gpt2 6x256", lambda: build_tiny_lm(larger), small
    untied = TinyLMConfig(vocab_size=1024, n_layer=6, n_embd=256, n_head=8, n_positions=128, tie_word_embeddings=False)
    yield "gpt2 6x256 untied", lambda: build_tiny_lm(untied), small
    gpt2_batch = make_batch(GPT2_SMALL.vocab_size, args.small_batch, args.small_seq)
    yield "gpt2-small (12x768, V 50257)", lambda: build_tiny_lm(GPT2_SMALL), gpt2_batch
    yield "gpt2-small LoRA r=8", gpt2_small_lora, gpt2_batch


def steps(factory, data) -> list[tuple[str, object, object]]:
    """``(label, step, release)`` per compared step; ``release`` drops what a step keeps alive
    until the next one (the gradients), so peaks count them (see ``peak_memory_mib``)."""
    model = factory().train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def non_private():
        optimizer.zero_grad(set_to_none=True)
        per_sample_loss(model, data).mean().backward()
        optimizer.step()

    def updater(per_sample: str) -> DPUpdater:
        dp_model = factory().train()
        trainable = [p for p in dp_model.parameters() if p.requires_grad]
        return DPUpdater(dp_model, torch.optim.Adam(trainable, lr=1e-4), ParameterGroups(dp_model),
                         data["input_ids"].shape[0], sample_rate=0.05, loss_fn=per_sample_loss, per_sample=per_sample)

    bookkeeping, materialized = updater("bookkeeping"), updater("opacus")
    opacus_step = opacus_flat_step(factory().train(), per_sample_loss, data)
    groups = len(bookkeeping.group_names)
    statistics = ReleasedStatistics(count_sigma=10.0, groups_counted=groups, loss_sigma=10.0)
    return [
        ("non-private", non_private, lambda: optimizer.zero_grad(set_to_none=True)),
        (f"dp-gym ({groups} groups)",
         lambda: bookkeeping.step(data, clip=1.0, noise=1.0, statistics=statistics), None),
        ("dp-gym, prune 0.5",
         lambda: bookkeeping.step(data, clip=1.0, noise=1.0, prune=0.5, statistics=statistics), None),
        ("dp-gym, per-sample grads (Opacus hooks)",
         lambda: materialized.step(data, clip=1.0, noise=1.0, statistics=statistics), None),
        ("Opacus make_private (flat)", opacus_step, opacus_step.release),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per row (default: 7)")
    parser.add_argument("--batch", type=int, default=32, help="batch of the small models (default: 32)")
    parser.add_argument("--seq", type=int, default=112, help="tokens per record, small models (default: 112)")
    parser.add_argument("--small-batch", type=int, default=8, help="batch of the GPT-2-small rows (default: 8)")
    parser.add_argument("--small-seq", type=int, default=32, help="tokens per record, GPT-2-small rows (default: 32)")
    parser.add_argument("--only", default="", help="only models whose name contains this (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = [(name, factory, {k: v.to(device) for k, v in batch.items()})
              for name, factory, batch in models(args) if args.only in name]

    def memory() -> dict:
        peaks = {}
        for name, factory, batch in chosen:
            for label, step, release in steps(lambda f=factory: f().to(device), batch):
                step()
                peaks[f"{name}|{label}"] = peak_memory_mib(step, release=release)
        return peaks

    if args.memory_only:
        print(json.dumps(memory()))
        return
    peaks = memory_in_child(["--memory-only"]) if device == "cpu" else memory()
    table = Table(title=f"DP step, {device}, {torch.get_num_threads()} threads, median of {args.repeats}; small "
                        f"models {args.batch} x {args.seq} tokens, gpt2-small {args.small_batch} x {args.small_seq}")
    for column in ("model", "step", "ms", "x non-private", "x Opacus", "peak MiB", "memory x non-private",
                   "memory x Opacus"):
        table.add_column(column, justify="left" if column in ("model", "step") else "right")
    for name, factory, batch in chosen:
        rows = [(label, median_ms(step, args.repeats), peaks[f"{name}|{label}"])
                for label, step, _ in steps(lambda f=factory: f().to(device), batch)]
        (_, base, base_mib), (_, opacus, opacus_mib) = rows[0], rows[-1]
        for label, ms, mib in rows:
            table.add_row(name, label, f"{ms:.1f}", f"{ms / base:.2f}", f"{ms / opacus:.2f}", f"{mib:.0f}",
                          f"{mib / base_mib:.2f}", f"{mib / opacus_mib:.2f}")
        table.add_section()
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
