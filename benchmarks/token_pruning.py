"""Visual-token pruning: DP step time, peak memory and utility for each rule and keep ratio.

Side by side in one process, on the tiny LLaVA and the scenes task (``--dataset digits`` for the
other): for keep ratio 1.0 / 0.5 / 0.25 and each rule, the non-private step time, dp-gym's DP step
time and peak memory (CUDA max allocated on a GPU; on CPU the resident-set growth during the step,
in a child process with glibc's mmap threshold fixed so that it tracks live tensors: see
``memory_in_child``),
and the public validation loss after one DP fine-tuning run of ``--updates`` updates at the same
epsilon (plain DP-SGD: a fixed clip, noise calibrated to spend the budget). Then the memory of dp-gym's DP
step vs Opacus' stock flat clipping (``make_private``) on the same model and batch.

    python benchmarks/token_pruning.py [--repeats 5] [--batch 32] [--updates 200] [--dataset scenes]
    # the session-2 default: 32x32 images, 64 visual tokens (fewer visual tokens per caption token)
    python benchmarks/token_pruning.py --tiny '{"image_size": 32, "lm": {"public_captions": 4000, "pretrain_seq_len": 128}}'

The default tiny LLaVA encodes 48x48 images into 144 visual tokens; its frozen vision tower's
features are computed once per image (``VisionLanguageTask(cache_vision_features=True)``), so a
step is pruning + projector + LM for every row.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import median_ms, memory_in_child, opacus_flat_step, peak_memory_mib  # noqa: E402

import dp_gym  # noqa: E402
from agents.heuristics import make_controller  # noqa: E402
from dp_gym.engine import DPUpdater, ParameterGroups  # noqa: E402
from dp_gym.evaluation import run_episode  # noqa: E402
from dp_gym.privacy import ReleasedStatistics  # noqa: E402
from dp_gym.tasks.vision import VisionLanguageTask  # noqa: E402

RULES = ("cls_attention", "cls_attention_fuse", "dissimilarity", "random")
SETTINGS = [("none", 1.0)] + [(rule, keep) for keep in (0.5, 0.25) for rule in RULES]


def dp_updater(task: VisionLanguageTask, data, device: str) -> DPUpdater:
    model = task.build_model().to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return DPUpdater(model, optimizer, ParameterGroups(model), data["input_ids"].shape[0], sample_rate=0.05,
                     loss_fn=task.per_sample_loss)


def step_times(task: VisionLanguageTask, batch, repeats: int, device: str) -> dict[str, float]:
    data = {k: v.to(device) for k, v in batch.items()}
    model = task.build_model().to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def non_private():
        optimizer.zero_grad(set_to_none=True)
        task.per_sample_loss(model, data).mean().backward()
        optimizer.step()

    updater = dp_updater(task, data, device)
    return {"non_private_ms": median_ms(non_private, repeats),
            "dp_ms": median_ms(lambda: dp_step(updater, data), repeats)}


def dp_step(updater: DPUpdater, data) -> None:
    """One DP step with the environments' privatized statistics (unclipped counts and loss)."""
    statistics = ReleasedStatistics(count_sigma=10.0, groups_counted=len(updater.group_names), loss_sigma=10.0)
    updater.step(data, clip=1.0, noise=1.0, statistics=statistics)


def step_memory(task: VisionLanguageTask, batch, device: str) -> dict[str, float]:
    """Peak memory of one dp-gym DP step and of one Opacus step (run in the memory-only child)."""
    data = {k: v.to(device) for k, v in batch.items()}
    updater = dp_updater(task, data, device)
    step = lambda: dp_step(updater, data)  # noqa: E731
    step()
    opacus = opacus_flat_step(task.build_model().to(device), task.per_sample_loss, data)
    opacus()
    return {"dp_mib": peak_memory_mib(step), "opacus_mib": peak_memory_mib(opacus, release=opacus.release)}


def final_val_loss(env_id: str, rule: str, keep: float, updates: int, clip: float, seed: int, tiny: dict) -> float:
    task_kwargs = {**dp_gym.config_of(env_id).task_kwargs, "tiny": tiny}
    env = dp_gym.make(env_id, token_pruning={"rule": rule, "keep_ratio": keep}, max_updates=updates,
                      task_kwargs=task_kwargs)
    controller = make_controller("vanilla", env, clip=clip)
    result = run_episode(controller, env, seed=seed, name=f"{rule}:{keep}")
    env.close()
    return result.final_val_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--clip", type=float, default=0.3)
    parser.add_argument("--dataset", choices=("scenes", "digits"), default="scenes")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--tiny", type=json.loads, default={}, help="TinyVLMConfig fields (JSON)")
    parser.add_argument("--no-utility", action="store_true", help="skip the DP fine-tuning runs (val loss)")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env_id = {"scenes": "dp_gym/TinyVision-v0", "digits": "dp_gym/TinyDigits-v0"}[args.dataset]

    def setting(rule: str, keep: float):
        task = VisionLanguageTask(dataset=args.dataset, token_pruning={"rule": rule, "keep_ratio": keep}, tiny=args.tiny)
        return task, task.train_batch(torch.arange(args.batch))

    if args.memory_only:
        print(json.dumps({f"{rule}:{keep}": step_memory(*setting(rule, keep), device) for rule, keep in SETTINGS}))
        return
    memory = (memory_in_child(["--memory-only"]) if device == "cpu" else
              {f"{rule}:{keep}": step_memory(*setting(rule, keep), device) for rule, keep in SETTINGS})
    rows = []
    for rule, keep in SETTINGS:
        task, batch = setting(rule, keep)
        costs = {**step_times(task, batch, args.repeats, device), **memory[f"{rule}:{keep}"]}
        costs["val_loss"] = (math.nan if args.no_utility else
                             final_val_loss(env_id, rule, keep, args.updates, args.clip, args.seed, args.tiny))
        rows.append((rule, keep, task.visual_tokens, costs))
        print(f"{rule} {keep}: {costs}", flush=True)

    base = rows[0][3]
    table = Table(title=f"Visual-token pruning, {env_id} {json.dumps(args.tiny) if args.tiny else ''}, batch {args.batch}, {device}, {torch.get_num_threads()} threads, "
                        f"median of {args.repeats}; val loss after {args.updates} DP updates at epsilon 3 (clip {args.clip:g})")
    for column in ("rule", "keep", "visual tokens", "non-private ms", "DP step ms", "DP time vs keep 1", "DP peak MiB",
                   "DP memory vs keep 1", "val loss", "val loss vs keep 1"):
        table.add_column(column, justify="left" if column == "rule" else "right")
    for rule, keep, tokens, c in rows:
        table.add_row(rule, f"{keep:g}", str(tokens), f"{c['non_private_ms']:.1f}", f"{c['dp_ms']:.1f}",
                      f"{100 * (c['dp_ms'] / base['dp_ms'] - 1):+.1f}%", f"{c['dp_mib']:.0f}",
                      f"{100 * (c['dp_mib'] / base['dp_mib'] - 1):+.1f}%", f"{c['val_loss']:.4f}",
                      f"{100 * (c['val_loss'] / base['val_loss'] - 1):+.2f}%")
    console = Console(width=200)
    console.print(table)

    opacus = Table(title="Peak memory of one DP step: dp-gym (per-group) vs Opacus make_private (flat), same model and batch")
    for column in ("rule", "keep", "dp-gym MiB", "Opacus MiB", "dp-gym / Opacus"):
        opacus.add_column(column, justify="left" if column == "rule" else "right")
    for rule, keep, _, c in rows:
        opacus.add_row(rule, f"{keep:g}", f"{c['dp_mib']:.0f}", f"{c['opacus_mib']:.0f}", f"{c['dp_mib'] / c['opacus_mib']:.2f}")
    console.print(opacus)


if __name__ == "__main__":
    main()
