"""lstmkit's command line: ``lstmkit COMMAND ...`` or ``python -m lstmkit COMMAND ...``.

Each command is a module with ``add_arguments(parser)`` and ``run(args) -> int``, imported only
when it is used. A command reports bad input by raising :class:`CommandError`: the user sees one
line and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help). New commands add one line here.
COMMANDS = {
    "demo": ("lstmkit.demo", "the lecture's memory example: hand-wired, then learned"),
    "train": ("lstmkit.train", "train an LSTM on a task (memory, adding, charlm), with checkpoints and resume"),
    "eval": ("lstmkit.evaluate", "a trained run's metric on the test split"),
    "generate": ("lstmkit.generate", "sample text from a trained charlm run"),
    "bench": ("lstmkit.bench", "time lstmkit on the CPU against torch.nn.LSTM and onnxruntime (ratios)"),
}


class CommandError(Exception):
    """Bad input to a command: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line (unknown flag, bad value) in one line, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lstmkit", description="The LSTM as the lecture teaches it.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module=module)
        importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(args.module).run(args)
    except CommandError as error:
        print(f"lstmkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lstmkit {args.command}: interrupted", file=sys.stderr)
        return 130
