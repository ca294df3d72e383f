"""``lstmkit generate RUN_DIR``: sample text from a trained charlm run, streamed as it is made.

    lstmkit generate runs/charlm-20260101-120000 --prime "ROMEO:" --length 500 --temperature 0.8

The prime runs through the LSTM once; then each sampled character is fed back with the state of
the previous step (one LSTM step per character) and printed at once.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from . import checkpoint, config as cfg, tasks
from .cli import CommandError
from .evaluate import add_run_arguments
from .run import open_run, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by lstmkit train charlm")
    parser.add_argument("--prime", default="\n", help="text to start from (default: a newline)")
    parser.add_argument("--length", type=int, default=500, help="characters to generate (default: 500)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="divides the logits: < 1 is more conservative (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.length < 0:
        raise CommandError(f"--length must be >= 0, got {args.length}")
    if not math.isfinite(args.temperature) or args.temperature <= 0:
        raise CommandError(f"--temperature must be a positive number, got {args.temperature}")
    if not args.prime:
        raise CommandError("--prime must hold at least one character")
    try:
        run_config, task, model, _ = open_run(args.run_dir, args.checkpoint, args.data, resolve_device(args.device))
        if run_config["task"] != "charlm":
            raise CommandError(f"{args.run_dir}: generate needs a charlm run; this one trained {run_config['task']!r}")
        generator = torch.Generator().manual_seed(args.seed)
        stream = task.generate(model, args.prime, args.length, args.temperature, generator,
                               next(model.parameters()).device)
        first = next(stream, "")  # an unknown prime character fails here, before anything is printed
        sys.stdout.write(args.prime + first)
        for character in stream:
            sys.stdout.write(character)
            sys.stdout.flush()
    except (cfg.ConfigError, tasks.TaskError, checkpoint.CheckpointError) as error:
        raise CommandError(str(error)) from None
    sys.stdout.write("\n")
    return 0
