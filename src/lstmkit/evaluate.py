"""``lstmkit eval RUN_DIR``: a trained run's metrics on the test split (or another split).

    lstmkit eval runs/adding-20260101-120000
    lstmkit eval runs/charlm-20260101-120000 --checkpoint last --split val --json

Prints one line; with ``--json`` a JSON object {"run", "checkpoint", "step", "split", metrics...}.
"""

from __future__ import annotations

import argparse
import json

from . import checkpoint, config as cfg, tasks
from .cli import CommandError
from .run import open_run, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by lstmkit train")
    add_run_arguments(parser)
    parser.add_argument("--split", choices=("test", "val"), default="test", help="which split (default: test)")
    parser.add_argument("--json", action="store_true", help="print a JSON object")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared with ``lstmkit generate``."""
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="which checkpoint (default: best)")
    parser.add_argument("--data", metavar="FILE", help="charlm: the training text, if it has moved")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def run(args: argparse.Namespace) -> int:
    try:
        run_config, task, model, meta = open_run(args.run_dir, args.checkpoint, args.data, resolve_device(args.device))
        metrics = task.evaluate(model, args.split, next(model.parameters()).device)
    except (cfg.ConfigError, tasks.TaskError, checkpoint.CheckpointError) as error:
        raise CommandError(str(error)) from None
    if args.json:
        print(json.dumps({"run": args.run_dir, "checkpoint": args.checkpoint, "step": meta["step"],
                          "split": args.split, **metrics}))
    else:
        shown = ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())
        print(f"{run_config['task']} {args.split}: {shown} ({args.checkpoint} checkpoint, step {meta['step']})")
    return 0
