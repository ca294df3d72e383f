"""Hochreiter & Schmidhuber's (1997) adding problem (section 5.4, "Experiment 4").

Each time step has two inputs: a value X uniform in [-1, 1] and a marker in {0, 1}. Exactly two
steps are marked: the first among the first 10 steps, the second among the rest of the first half
(T/2) of the sequence. At the end of the sequence the target is

    y = 0.5 + (X_1 + X_2) / 4.0      (in [0, 1])

where X_1 and X_2 are the marked values. The paper's criterion: a sequence is processed correctly
when the absolute error at its end is below 0.04. Sequences here have a fixed length T (``seq_len``,
default 100); the paper's -1 markers at the first and last step are left out (they tell a
network where the sequence ends, which a fixed-length sequence already does).
"""

from __future__ import annotations

import torch

from . import Task, TaskError, step_generator

TOLERANCE = 0.04  # |error| below this: the sequence is solved (the paper's criterion)


def sample(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sequences: x (T, B, 2) float32 (value, marker) and target y (B, 1)."""
    values = torch.rand(length, batch, generator=generator) * 2 - 1  # (T, B)
    half = length // 2
    first_range = min(10, half - 1)
    first = torch.randint(0, first_range, (batch,), generator=generator)  # (B,)
    second = torch.randint(first_range, half, (batch,), generator=generator)  # (B,)
    columns = torch.arange(batch)
    markers = torch.zeros(length, batch)
    markers[first, columns] = 1.0
    markers[second, columns] = 1.0
    y = 0.5 + (values[first, columns] + values[second, columns]) / 4.0  # (B,)
    return torch.stack([values, markers], dim=-1), y[:, None]


class AddingTask(Task):
    """``lstmkit train adding``: the head reads the LSTM's output at the last step.

    The default ``forget_bias`` of 5 starts the forget gates nearly open (f(5) = 0.993), so that
    the first marked value survives the ~90 steps to the end; with 0 or 3 the default run stays on
    the plateau of MSE 0.045 (predicting the mean) for its first 2000 steps or more.

    Metrics: ``mse`` (mean squared error at the end) and ``solved`` (fraction with |error| < 0.04).
    """

    name = "adding"
    metrics = ("mse", "solved")
    maximize = False
    defaults = {"seq_len": 100, "hidden_size": 64, "batch_size": 64, "steps": 6000, "lr": 0.003,
                "schedule": "cosine", "forget_bias": 5.0, "eval_every": 250, "threads": 1}
    EVAL_SEQUENCES = 1000
    input_size, output_size = 2, 1

    def __init__(self, config: dict, rank: int = 0, world_size: int = 1, info: dict | None = None) -> None:
        super().__init__(config, rank, world_size, info)
        if config["seq_len"] < 4:
            raise TaskError(f"--seq-len must be at least 4 for the adding problem, got {config['seq_len']}")

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = step_generator(self.config["seed"], step, self.rank)
        return sample(batch_size, self.config["seq_len"], generator)

    def eval_batches(self, split: str):
        generator = step_generator(0, 0, 0, stream=f"adding-{split}")
        yield sample(self.EVAL_SEQUENCES, self.config["seq_len"], generator)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(output[-1], target)  # output (T, B, 1) -> last step

    @torch.no_grad()
    def evaluate(self, model, split: str, device: torch.device) -> dict[str, float]:
        errors = []
        for x, y in self.eval_batches(split):
            output, _ = model(x.to(device))
            errors.append(output[-1].float().cpu() - y)  # (B, 1)
        error = torch.cat(errors)
        return {"mse": float((error**2).mean()), "solved": float((error.abs() < TOLERANCE).float().mean())}
