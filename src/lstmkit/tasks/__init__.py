"""Tasks that lstmkit trains on: generated on the fly (memory, adding) or read from a file (charlm).

Every task has the interface of :class:`Task`: data (``train_batch`` by step, ``eval_batches``
by split), the model's input and output sizes (the head is a linear layer on the LSTM's output),
the loss, and the evaluation metrics. ``lstmkit train TASK`` looks tasks up in :data:`TASKS`.

Training data is a deterministic function of (seed, step, rank), so a resumed run sees exactly
the batches an uninterrupted run would have seen, and each process of a distributed run gets its
own shard.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import ClassVar, Iterator

import torch
from torch import nn

# task name -> (module, class name); modules are imported only when used.
TASKS = {
    "memory": ("lstmkit.tasks.memory", "MemoryTask"),
    "adding": ("lstmkit.tasks.adding", "AddingTask"),
    "charlm": ("lstmkit.tasks.charlm", "CharLMTask"),
}


class TaskError(ValueError):
    """Bad task input (a data file, an option): the message is one line for the user."""


def step_generator(seed: int, step: int, rank: int = 0, stream: str = "train") -> torch.Generator:
    """A CPU generator seeded from (stream, seed, step, rank): the data of one step of one process."""
    digest = hashlib.sha256(f"{stream}/{seed}/{step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class Task:
    """One task: data, model sizes, loss and metrics.

    Class attributes:
        name: the task's name on the command line.
        metrics: metric names that :meth:`evaluate` returns; ``metrics[0]`` selects the best
            checkpoint, larger is better when ``maximize``.
        defaults: the task's defaults for training settings (``lstmkit.config`` keys).
        stateful: the LSTM state is carried from one training batch to the next (truncated
            backpropagation through time); :meth:`starts_sequence` says when it is reset.

    Instance attributes (set by ``__init__`` from the resolved config):
        input_size: features per time step fed to the LSTM (after the embedding, if any).
        output_size: features the linear head produces per time step.
        vocab_size: None, or the number of symbols an embedding of ``embed_dim`` maps from.
    """

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    maximize: ClassVar[bool]
    defaults: ClassVar[dict] = {}
    stateful: ClassVar[bool] = False
    input_size: int
    output_size: int
    vocab_size: int | None = None

    def __init__(self, config: dict, rank: int = 0, world_size: int = 1, info: dict | None = None) -> None:
        """``info``: what :meth:`info` returned when the run was created (None for a new run)."""
        self.config, self.rank, self.world_size = config, rank, world_size

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of training step ``step`` for this process (time-major)."""
        raise NotImplementedError

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed evaluation data of ``split`` ("val" or "test"), in batches."""
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of the head's ``output`` (T, B, output_size) against ``target``."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str, device: torch.device) -> dict[str, float]:
        """The task's metrics on ``split``, with the model in eval mode and without gradients."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Read and check the task's data now (a task made from ``info`` may read it lazily), so
        that a bad file is reported before anything is written."""

    def starts_sequence(self, step: int) -> bool:
        """For stateful tasks: the carried state is reset before this step."""
        return True

    def info(self) -> dict:
        """What the run folder must remember about the data (e.g. a vocabulary), JSON-able."""
        return {}


def get(name: str) -> type[Task]:
    """The task class called ``name``; a :class:`TaskError` lists the known tasks otherwise."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; expected one of: {', '.join(TASKS)}")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(module), cls)
