"""The ``dp-gym`` command line."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not (0 < value < 1):
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def finetune_fixed(args: argparse.Namespace) -> dict:
    """Plain DP-SGD on the tiny default: equal per-group noise spending the budget in ``updates``."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from dp_gym.envs.fine_tuning import FineTuningRun, RunSettings
    from dp_gym.privacy import calibrate_noise, equal_group_sigmas
    from dp_gym.tasks import TextTask, perplexity

    console = Console()
    console.print("[bold]dp-gym[/]: preparing the tiny default (first run pre-trains it on public text, cached)")
    task = TextTask(n_train=args.n_train)
    settings = RunSettings(delta=args.delta, sample_rate=args.sample_rate, learning_rate=args.lr, seed=args.seed)
    run = FineTuningRun(task, settings)
    groups = len(run.group_names)
    z = calibrate_noise(args.epsilon, args.delta, args.sample_rate, args.updates, settings.accountant)
    sigmas = np.array(equal_group_sigmas(z, groups, settings.count_noise,
                                         groups if settings.count_noise else 0, settings.loss_noise))
    clip, prune = np.full(groups, args.clip), np.zeros(groups)
    start = time.perf_counter()
    val_before = run.evaluate()
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("DP fine-tuning", total=args.updates)
        for _ in range(args.updates):
            run.run_updates(clip, sigmas, prune, 1)
            progress.update(bar, advance=1, description=f"DP fine-tuning (epsilon {run.ledger.epsilon():.3f})")
    val_after = run.evaluate()
    result = {
        "mode": "fixed DP-SGD",
        "epsilon": run.ledger.epsilon(),
        "epsilon_budget": args.epsilon,
        "delta": args.delta,
        "accountant": settings.accountant,
        "updates": run.updates,
        "groups": run.group_names,
        "group_noise_multiplier": float(sigmas[0]),
        "composed_noise_multiplier": z,
        "clip": args.clip,
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "val_ppl_before": perplexity(val_before),
        "val_ppl_after": perplexity(val_after),
        "wall_time_s": time.perf_counter() - start,
        "privacy_valid": True,
    }
    table = Table(title="DP fine-tuning of the tiny default")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("epsilon spent / budget", f"{result['epsilon']:.3f} / {args.epsilon:g} (delta {args.delta:g})")
    table.add_row("updates", str(run.updates))
    table.add_row("groups x sigma_g", f"{groups} x {sigmas[0]:.3f} (composed z = {z:.3f})")
    table.add_row("val perplexity before", f"{result['val_ppl_before']:.2f}")
    table.add_row("val perplexity after", f"{result['val_ppl_after']:.2f}")
    table.add_row("wall time", f"{result['wall_time_s']:.1f} s")
    console.print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    console.print(f"results written to {out / 'results.json'}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dp-gym", description="DP fine-tuning of language models as an RL environment")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_finetune_arguments(command: argparse.ArgumentParser, out: str) -> None:
        command.add_argument("--epsilon", type=_positive_float, default=3.0)
        command.add_argument("--delta", type=_probability, default=1e-5)
        command.add_argument("--updates", type=_positive_int, default=100)
        command.add_argument("--clip", type=_positive_float, default=0.5)
        command.add_argument("--lr", type=_positive_float, default=5e-3)
        command.add_argument("--sample-rate", type=_probability, default=0.05)
        command.add_argument("--n-train", type=_positive_int, default=512)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--out", default=out)

    finetune = commands.add_parser("finetune", help="DP fine-tuning with a fixed DP-SGD schedule")
    add_finetune_arguments(finetune, "runs/finetune")
    demo = commands.add_parser("demo", help="the main job on the offline default")
    add_finetune_arguments(demo, "runs/demo")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("finetune", "demo"):
            finetune_fixed(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"dp-gym {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
