"""Training settings: one table of options, read from flags and from ``--config FILE.toml``.

Precedence, lowest first: the defaults below, the task's defaults (``Task.defaults``), the TOML
file, then flags given on the command line. TOML keys are the option names below (``hidden_size``
or ``hidden-size``), flat, with TOML types (``activations = ["sigmoid", "tanh", "tanh"]`` or the
flag's string form).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

# name -> (type, default, help). Types: int, float, str, bool, or a tuple of choices (strings).
MODEL = {
    "hidden_size": (int, 64, "cells per layer, H"),
    "num_layers": (int, 1, "stacked LSTM layers"),
    "bias": (bool, True, "use bias_ih and bias_hh"),
    "dropout": (float, 0.0, "dropout between layers"),
    "bidirectional": (bool, False, "two directions (not for charlm)"),
    "proj_size": (int, 0, "project h to this size (LSTMP); 0 = none"),
    "peephole": (("none", "diagonal", "full"), "none", "peephole connections"),
    "activations": (str, "sigmoid,tanh,tanh", "f,g,h: names or name:alpha[:beta], comma-separated"),
    "coupled_gates": (bool, False, "forget gate = 1 - input gate (CIFG)"),
    "gates": (str, "ifo", "the gates that exist, a subset of 'ifo'"),
    "clip": (float, None, "clamp gate inputs to [-clip, clip] (ONNX clip)"),
    "cell_clip": (float, None, "clamp the cell to [-cell_clip, cell_clip] (TF1)"),
    "forget_bias": (float, 0.0, "added to the forget-gate bias at initialisation"),
    "backend": (str, "auto", "lstmkit backend"),
}
TRAINING = {
    "optimizer": (("adam", "adamw", "sgd"), "adam", "optimizer"),
    "lr": (float, 0.001, "learning rate"),
    "weight_decay": (float, 0.0, "weight decay"),
    "momentum": (float, 0.9, "momentum (sgd)"),
    "schedule": (("constant", "cosine", "linear"), "constant", "learning-rate schedule after warmup"),
    "warmup": (int, 0, "linear warmup steps"),
    "grad_clip": (float, 1.0, "clip the gradient norm to this; 0 = off"),
    "batch_size": (int, 32, "sequences per step and process"),
    "steps": (int, 1000, "training steps in all"),
    "eval_every": (int, 100, "evaluate and checkpoint every this many steps"),
    "seed": (int, 0, "seed of the initialisation, data and dropout"),
    "device": (("auto", "cpu", "cuda"), "auto", "where to train"),
    "amp": (("off", "bf16", "fp16"), "off", "mixed precision (CUDA only)"),
    "threads": (int, 0, "CPU threads of each process; 0 = PyTorch's default"),
}
TASK = {
    "seq_len": (int, None, "sequence length (memory, adding) or truncated BPTT length (charlm)"),
    "data": (str, None, "charlm: a UTF-8 text file"),
    "embed_dim": (int, 64, "charlm: character embedding size"),
}
OPTIONS = {**MODEL, **TRAINING, **TASK}
# Settings that may differ when a run is resumed; all others must match the run's.
RESUMABLE = {"steps", "eval_every", "device", "data", "threads"}


class ConfigError(ValueError):
    """A bad setting: the message is one line for the user."""


def add_arguments(parser: argparse.ArgumentParser, task_defaults: dict[str, dict]) -> None:
    """One flag per option (``--hidden-size``), default None so that given flags are known.

    ``task_defaults`` maps task names to their defaults, shown in the help."""
    for title, table in (("model", MODEL), ("training", TRAINING), ("task", TASK)):
        group = parser.add_argument_group(title)
        for name, (kind, default, help_text) in table.items():
            flag = "--" + name.replace("_", "-")
            per_task = ", ".join(f"{task} {d[name]}" for task, d in task_defaults.items() if name in d)
            shown = f"{help_text} (default: {default}{'; ' + per_task if per_task else ''})"
            if kind is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=shown)
            elif isinstance(kind, tuple):
                group.add_argument(flag, choices=kind, default=None, help=shown)
            else:
                group.add_argument(flag, type=kind, default=None, metavar=name.upper(), help=shown)


def given(args: argparse.Namespace) -> dict:
    """The options given as flags."""
    return {name: getattr(args, name) for name in OPTIONS if getattr(args, name, None) is not None}


def read_toml(path: str) -> dict:
    """The settings of a TOML file, checked against the option table."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError('--config needs tomli on Python < 3.11: pip install "lstmkit[train]"') from None
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"--config {path}: not valid TOML ({error})") from None
    settings = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "task" and isinstance(value, str):
            settings["task"] = value
            continue
        if name not in OPTIONS:
            raise ConfigError(f"--config {path}: unknown setting {key!r}")
        if name == "activations" and isinstance(value, list):
            value = ",".join(":".join(str(v) for v in (a if isinstance(a, list) else [a])) for a in value)
        settings[name] = check(name, value, f"--config {path}: {key}")
    return settings


def check(name: str, value, where: str):
    """``value`` converted to option ``name``'s type; a :class:`ConfigError` names ``where``."""
    kind = OPTIONS[name][0]
    if value is None:
        return None
    if isinstance(kind, tuple):
        if value not in kind:
            raise ConfigError(f"{where} must be one of {', '.join(kind)}, got {value!r}")
    elif kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        value = float(value)
    elif not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def resolve(task_defaults: dict, file_settings: dict, flags: dict) -> dict:
    """The full config: defaults < task defaults < file < flags, with the ranges checked."""
    config = {name: default for name, (_, default, _) in OPTIONS.items()}
    config.update(task_defaults)
    config.update({k: v for k, v in file_settings.items() if k != "task"})
    config.update(flags)
    for name in ("hidden_size", "num_layers", "batch_size", "steps", "eval_every", "seq_len", "embed_dim"):
        if config[name] is not None and config[name] <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {config[name]}")
    for name in ("lr", "weight_decay", "grad_clip", "momentum", "warmup", "proj_size", "threads"):
        if config[name] < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {config[name]}")
    if config["lr"] == 0:
        raise ConfigError("--lr must be positive")
    return config


def parse_activations(text: str) -> list:
    """``"sigmoid,leaky_relu:0.1,tanh"`` -> ["sigmoid", ("leaky_relu", 0.1), "tanh"]."""
    result = []
    for part in text.split(","):
        name, *params = part.strip().split(":")
        try:
            result.append((name, *map(float, params)) if params else name)
        except ValueError:
            raise ConfigError(f"--activations: bad parameter in {part!r}; expected name:alpha[:beta]") from None
    if len(result) != 3:
        raise ConfigError(f"--activations needs three functions f,g,h, got {text!r}")
    return result


def lstm_kwargs(config: dict, input_size: int) -> dict:
    """lstmkit.LSTM's arguments for ``config`` (time-major, float32)."""
    return {
        "input_size": input_size,
        "hidden_size": config["hidden_size"],
        "num_layers": config["num_layers"],
        "bias": config["bias"],
        "dropout": config["dropout"],
        "bidirectional": config["bidirectional"],
        "proj_size": config["proj_size"],
        "peephole": None if config["peephole"] == "none" else config["peephole"],
        "activations": parse_activations(config["activations"]),
        "coupled_gates": config["coupled_gates"],
        "gates": config["gates"],
        "clip": config["clip"],
        "cell_clip": config["cell_clip"],
        "forget_bias": config["forget_bias"],
        "backend": config["backend"],
    }


def incompatible(saved: dict, flags: dict) -> list[str]:
    """Flags that differ from a saved run's config where they must not, as 'name=new (run: old)'."""
    return [
        f"--{name.replace('_', '-')} {value} (the run has {saved.get(name)})"
        for name, value in flags.items()
        if name not in RESUMABLE and saved.get(name) != value
    ]
