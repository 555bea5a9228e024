"""DP step cost: non-private vs dp-gym (per-group clip/noise/prune) vs Opacus stock flat clipping.

All measured side by side in one process, on the same batch, for the tiny default and a larger
GPT-2 (6 layers, 256 wide). Prints one table; ratios are what to read.

    python benchmarks/dp_step.py [--repeats 7] [--batch 32] [--seq 112]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import median_ms, opacus_flat_step, peak_memory_mib, with_stable_allocator  # noqa: E402

from dp_gym.engine import DPUpdater, ParameterGroups  # noqa: E402
from dp_gym.models.tiny_lm import TinyLMConfig, build_tiny_lm, ensure_tiny_lm  # noqa: E402
from dp_gym.tasks.text import per_token_losses  # noqa: E402


def per_sample_loss(model, batch):
    losses = per_token_losses(model, batch["input_ids"], batch["attention_mask"])
    return losses.sum(dim=1) / batch["attention_mask"][:, 1:].sum(dim=1).clamp(min=1)


def make_batch(vocab: int, batch: int, seq: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1, vocab, (batch, seq), generator=generator),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def models():
    from transformers import AutoModelForCausalLM

    tiny_path = ensure_tiny_lm()
    yield "tiny (3x96)", lambda: AutoModelForCausalLM.from_pretrained(tiny_path)
    larger = TinyLMConfig(vocab_size=1024, n_layer=6, n_embd=256, n_head=8, n_positions=128)
    yield "gpt2 6x256", lambda: build_tiny_lm(larger)


def bench_model(name, factory, batch, repeats, device):
    rows = []
    data = {k: v.to(device) for k, v in batch.items()}

    model = factory().to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def non_private():
        optimizer.zero_grad(set_to_none=True)
        per_sample_loss(model, data).mean().backward()
        optimizer.step()

    rows.append(("non-private", median_ms(non_private, repeats), peak_memory_mib(non_private)))

    model = factory().to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    groups = ParameterGroups(model)
    size = data["input_ids"].shape[0]
    updater = DPUpdater(model, optimizer, groups, size, sample_rate=0.05, loss_fn=per_sample_loss)

    def dp_gym_step():
        updater.step(data, clip=1.0, noise=1.0, prune=0.0, count_noise=10.0, loss_noise=10.0)

    rows.append((f"dp-gym ({len(groups)} groups)", median_ms(dp_gym_step, repeats), peak_memory_mib(dp_gym_step)))

    def dp_gym_pruned():
        updater.step(data, clip=1.0, noise=1.0, prune=0.5, count_noise=10.0, loss_noise=10.0)

    rows.append(("dp-gym, prune 0.5", median_ms(dp_gym_pruned, repeats), peak_memory_mib(dp_gym_pruned)))

    opacus_step = opacus_flat_step(factory().to(device).train(), per_sample_loss, data)
    rows.append(("Opacus make_private (flat)", median_ms(opacus_step, repeats), peak_memory_mib(opacus_step)))
    return [(name, *row) for row in rows]


def main() -> None:
    with_stable_allocator()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=112)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = make_batch(1024, args.batch, args.seq)
    table = Table(title=f"DP step, batch {args.batch} x {args.seq} tokens, {device}, "
                        f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for column in ("model", "step", "ms", "x non-private", "x Opacus", "peak MiB"):
        table.add_column(column, justify="left" if column in ("model", "step") else "right")
    for name, factory in models():
        rows = bench_model(name, factory, batch, args.repeats, device)
        base, opacus = rows[0][2], rows[-1][2]
        for model_name, step, ms, mib in rows:
            table.add_row(model_name, step, f"{ms:.1f}", f"{ms / base:.2f}", f"{ms / opacus:.2f}", f"{mib:.0f}")
        table.add_section()
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
