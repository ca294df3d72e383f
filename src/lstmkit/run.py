"""A training run: the model, the run folder and the processes of a distributed run.

A run folder holds::

    config.json              the task, the resolved settings, the task's data info, world size
    metrics.jsonl            one JSON object per line: {"step", "split", ...metrics, "elapsed"}
    checkpoints/last.safetensors, checkpoints/best.safetensors   (see lstmkit.checkpoint)
    curve.png                the learning curves

Only the process of rank 0 writes to it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from torch import nn

import lstmkit

from . import checkpoint, config as cfg, tasks


class SequenceModel(nn.Module):
    """(embedding) -> LSTM -> linear head at every time step.

    Inputs: x (T, B, input_size) float, or (T, B) character indices with an embedding; optional
    LSTM state (h, c). Returns the head's output (T, B, output_size) and the final state.
    """

    def __init__(self, lstm: nn.Module, output_size: int, vocab_size: int | None = None, embed_dim: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim) if vocab_size else None
        self.lstm = lstm
        width = (lstm.proj_size or lstm.hidden_size) * (2 if lstm.bidirectional else 1)
        self.head = nn.Linear(width, output_size)

    def forward(self, x: torch.Tensor, state=None):
        if self.embed is not None:
            x = self.embed(x)  # (T, B) -> (T, B, E)
        y, state = self.lstm(x, state)  # (T, B, D*H_out)
        return self.head(y), state


def build_model(task: tasks.Task, config: dict, lstm_class=None) -> SequenceModel:
    """The task's model, initialised from ``config["seed"]``; ``lstm_class`` defaults to lstmkit.LSTM.

    Settings lstmkit.LSTM refuses raise a :class:`lstmkit.config.ConfigError` with its message.
    """
    if task.stateful and config["bidirectional"]:
        raise cfg.ConfigError(f"--bidirectional: the {task.name} task predicts the future; it needs a causal LSTM")
    torch.manual_seed(config["seed"])
    kwargs = cfg.lstm_kwargs(config, task.input_size)
    try:
        lstm = lstmkit.LSTM(**kwargs) if lstm_class is None else lstm_class(**kwargs)
    except (ValueError, TypeError) as error:
        raise cfg.ConfigError(str(error)) from None
    return SequenceModel(lstm, task.output_size, task.vocab_size, config["embed_dim"])


class RunDir:
    """The files of a run folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config_file = self.path / "config.json"
        self.metrics_file = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"

    def checkpoint(self, which: str) -> Path:
        return self.checkpoints / f"{which}.safetensors"

    def create(self, run: dict) -> None:
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            self.write_json(self.config_file, run)
        except OSError as error:
            raise cfg.ConfigError(f"--run-dir {self.path}: cannot write the run folder ({error.strerror})") from None

    def read_config(self) -> dict:
        if not self.config_file.is_file():
            raise cfg.ConfigError(f"{self.path}: not a run folder (no config.json)")
        try:
            run = json.loads(self.config_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            run = None
        if not isinstance(run, dict) or not {"task", "config"} <= run.keys():
            raise cfg.ConfigError(f"{self.config_file}: not an lstmkit run config")
        return run

    def write_json(self, path: Path, value) -> None:
        checkpoint.atomic_write(path, (json.dumps(value, indent=2) + "\n").encode("utf-8"))

    def log(self, record: dict) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict]:
        if not self.metrics_file.is_file():
            return []
        records = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a killed process
        return records

    def truncate_metrics(self, step: int) -> None:
        """Keep the records up to ``step`` (those after it belong to steps a resume redoes)."""
        kept = [r for r in self.metrics() if r["step"] <= step]
        checkpoint.atomic_write(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))

    def plot(self, metric: str) -> None:
        """curve.png: training loss and the validation ``metric`` against the step."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return  # the curve is a convenience; metrics.jsonl has the numbers
        records = self.metrics()
        train = [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
        val = [(r["step"], r[metric]) for r in records if r["split"] == "val" and metric in r]
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for axis, points, label in ((left, train, "training loss"), (right, val, f"validation {metric}")):
            if points:
                axis.plot(*zip(*points), marker="." if len(points) < 50 else None)
            axis.set_xlabel("step")
            axis.set_title(label)
            axis.grid(alpha=0.3)
        left.set_yscale("log")
        figure.suptitle(self.path.name)
        figure.tight_layout()
        image = io.BytesIO()
        figure.savefig(image, format="png", dpi=100)
        plt.close(figure)
        checkpoint.atomic_write(self.path / "curve.png", image.getvalue())


def open_run(path: str, which: str, data: str | None, device: torch.device):
    """(run config, task, model with the checkpoint's weights, checkpoint meta) of a run folder,
    for ``lstmkit eval`` and ``lstmkit generate``."""
    run_dir = RunDir(path)
    run = run_dir.read_config()
    config = dict(run["config"], **({"data": data} if data else {}))
    task = tasks.get(run["task"])(config, info=run.get("info"))
    tensors, meta = checkpoint.load(run_dir.checkpoint(which))
    model = build_model(task, config)
    load_weights(model, checkpoint.prefixed(tensors, "model"), run_dir.checkpoint(which))
    return run, task, model.to(device).eval(), meta


def load_weights(model: nn.Module, weights: dict, source) -> None:
    """Load a state dict, turning any mismatch into a one-line CheckpointError."""
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise checkpoint.CheckpointError(f"{source}: its weights do not fit this run's model") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when available; a CUDA process of a distributed run uses its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise cfg.ConfigError("--device cuda: no CUDA device available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")
