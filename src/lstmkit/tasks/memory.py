"""The lecture's memory task (SPEC section 3).

Inputs x^t = (x1, x2, x3): x1 an integer, x2 in {-1, 0, 1}, x3 in {0, 1}. The rule: when x2 = 1
add x1 into the memory; when x2 = -1 reset the memory; when x3 = 1 output the number in the
memory (and 0 when x3 = 0). The target y^t is that output, from the memory *after* step t.
"""

from __future__ import annotations

import torch

from . import Task, step_generator

# The slide's two sequences: (x1, x2, x3) rows and the memory after each step and y rows.
SLIDE = {
    "slide": {
        "x1": [1, 3, 2, 4, 2, 1, 3, 6, 1],
        "x2": [0, 1, 0, 1, 0, 0, -1, 1, 0],
        "x3": [0, 0, 0, 0, 0, 1, 0, 0, 1],
        "memory": [0, 3, 3, 7, 7, 7, 0, 6, 6],
        "y": [0, 0, 0, 0, 0, 7, 0, 0, 6],
    },
    "walkthrough": {
        "x1": [3, 4, 2, 1, 3],
        "x2": [1, 1, 0, 0, -1],
        "x3": [0, 0, 0, 1, 0],
        "memory": [3, 7, 7, 7, 0],
        "y": [0, 0, 0, 7, 0],
    },
}


def slide_input(name: str) -> torch.Tensor:
    """One of the slide's sequences as an input tensor (T, 3)."""
    rows = SLIDE[name]
    return torch.tensor([rows["x1"], rows["x2"], rows["x3"]], dtype=torch.float32).t()


def targets(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule applied to x (T, B, 3): returns (memory after each step, y), each (T, B)."""
    memory = torch.zeros(x.shape[1], dtype=x.dtype)
    memories, outputs = [], []
    for x_t in x.unbind(0):  # (B, 3)
        x1, x2, x3 = x_t.unbind(-1)  # each (B,)
        memory = torch.where(x2 == 1, memory + x1, torch.where(x2 == -1, torch.zeros_like(memory), memory))
        memories.append(memory)
        outputs.append(torch.where(x3 == 1, memory, torch.zeros_like(memory)))
    return torch.stack(memories), torch.stack(outputs)


def sample(batch: int, length: int, generator: torch.Generator, max_value: int = 9,
           p_add: float = 0.3, p_reset: float = 0.1, p_output: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sequences of the task: x (T, B, 3) float32 and target y (T, B, 1).

    x1 is uniform in 1..max_value; x2 is 1 with probability p_add, -1 with p_reset, else 0;
    x3 is 1 with probability p_output.
    """
    x1 = torch.randint(1, max_value + 1, (length, batch), generator=generator).float()
    u = torch.rand(length, batch, generator=generator)
    x2 = (u < p_add).float() - (u > 1 - p_reset).float()
    x3 = (torch.rand(length, batch, generator=generator) < p_output).float()
    x = torch.stack([x1, x2, x3], dim=-1)
    return x, targets(x)[1][..., None]


class MemoryTask(Task):
    """``lstmkit train memory``: learn the rule from random sequences of length ``seq_len``.

    The head predicts y / SCALE at every step (mean squared error); the metric ``accuracy`` is
    the fraction of steps with x3 = 1 whose prediction, rounded to an integer, equals y.
    """

    name = "memory"
    metrics = ("accuracy", "mse")
    maximize = True
    defaults = {"seq_len": 20, "hidden_size": 64, "batch_size": 128, "steps": 4000, "lr": 0.01,
                "schedule": "cosine", "eval_every": 100, "threads": 1}
    SCALE = 10.0
    EVAL_SEQUENCES = 512
    input_size, output_size = 3, 1

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = step_generator(self.config["seed"], step, self.rank)
        return sample(batch_size, self.config["seq_len"], generator)  # (T, B, 3), (T, B, 1)

    def eval_batches(self, split: str):
        generator = step_generator(0, 0, 0, stream=f"memory-{split}")
        yield sample(self.EVAL_SEQUENCES, self.config["seq_len"], generator)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(output, target / self.SCALE)

    @torch.no_grad()
    def evaluate(self, model, split: str, device: torch.device) -> dict[str, float]:
        correct = total = 0
        squared = 0.0
        for x, y in self.eval_batches(split):
            output, _ = model(x.to(device))
            prediction = output.float().cpu() * self.SCALE  # (T, B, 1)
            shown = x[..., 2:3] == 1  # steps with x3 = 1
            correct += int(((prediction.round() == y) & shown).sum())
            total += int(shown.sum())
            squared += float(((prediction - y)[shown] ** 2).sum())
        return {"accuracy": correct / max(total, 1), "mse": squared / max(total, 1)}
