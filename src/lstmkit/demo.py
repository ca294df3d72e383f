"""``lstmkit demo``: the lecture's memory example (SPEC section 3), hand-wired and then learned.

One LSTM cell with three inputs: when x2 = 1 it adds x1 into its memory, when x2 = -1 it resets
the memory, when x3 = 1 it outputs the memory. The hand-wired network uses the slide's weights
through the public :class:`lstmkit.LSTM` API; the learned one is trained on random sequences of
the same task (:mod:`lstmkit.tasks.memory`) and then run on the slide's sequences and on
sequences 20x longer than those it trained on.
"""

from __future__ import annotations

import json
import os
import time

import torch

from .cli import CommandError
from .inspect import trace
from .lstm import LSTM
from .tasks import memory

# The lecture's cell: f sigmoid, g and h linear.
ACTIVATIONS = ("sigmoid", "identity", "identity")
# The slide's weights, rows in gate order i, f, g(=z), o; columns x1, x2, x3.
WEIGHT_IH = [[0.0, 100.0, 0.0],  # z_i = 100 x2 - 10: the input gate opens only when x2 = 1
             [0.0, 100.0, 0.0],  # z_f = 100 x2 + 10: the forget gate closes only when x2 = -1
             [1.0, 0.0, 0.0],  # z = x1
             [0.0, 0.0, 100.0]]  # z_o = 100 x3 - 10: the output gate opens only when x3 = 1
BIAS_IH = [-10.0, 10.0, 0.0, -10.0]

TRAIN = {"steps": 3000, "length": 40, "batch": 64, "lr": 0.1, "forget_bias": 1.0}
LONG = {"factor": 20, "sequences": 1000}


def handwired() -> LSTM:
    """The slide's network: one cell, weights set by hand, no recurrent weights."""
    lstm = LSTM(3, 1, activations=ACTIVATIONS)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.tensor(WEIGHT_IH))
        lstm.bias_ih_l0.copy_(torch.tensor(BIAS_IH))
        lstm.weight_hh_l0.zero_()
        lstm.bias_hh_l0.zero_()
    return lstm


def learn(seed: int = 0, steps: int = TRAIN["steps"], length: int = TRAIN["length"], batch: int = TRAIN["batch"],
          lr: float = TRAIN["lr"]) -> LSTM:
    """Train the same one-cell network from random weights on random sequences of the task.

    Adam with a one-cycle schedule on the squared error of y at every step (the target is 0
    where x3 = 0), gradient norm clipped to 1. Deterministic for a given seed.
    """
    torch.manual_seed(seed)
    lstm = LSTM(3, 1, activations=ACTIVATIONS, forget_bias=TRAIN["forget_bias"])
    optimizer = torch.optim.Adam(lstm.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    data = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x, target = memory.sample(batch, length, data)  # (T, B, 3), (T, B, 1)
        loss = (lstm(x)[0] - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lstm.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return lstm


@torch.no_grad()
def table(lstm: LSTM, name: str) -> dict[str, list[float]]:
    """The slide's rows for one of its sequences: inputs, memory before and after each step,
    the three gates and the output y, as unrounded floats."""
    x = memory.slide_input(name)  # (T, 3)
    record = trace(lstm, x)
    y = lstm(x)[0][:, 0]  # the module's own output (T,)
    after = record["cell"][0][:, 0]
    before = torch.cat([torch.zeros(1), after[:-1]])
    rows = {"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "memory_before": before, "memory_after": after,
            "gate_i": record["input_gate"][0][:, 0], "gate_f": record["forget_gate"][0][:, 0],
            "gate_o": record["output_gate"][0][:, 0], "y": y}
    return {key: [float(v) for v in values] for key, values in rows.items()}


@torch.no_grad()
def long_sequence_error(lstm: LSTM, length: int, sequences: int = LONG["sequences"], seed: int = 12345) -> dict:
    """On random sequences of ``length`` steps: the fraction of steps with x3 = 1 where
    |y - target| < 0.5, and the mean |y - target| there."""
    x, target = memory.sample(sequences, length, torch.Generator().manual_seed(seed))
    error = (lstm(x)[0] - target)[..., 0].abs()[x[..., 2] == 1]
    return {"length": length, "sequences": sequences, "output_steps": int(error.numel()),
            "within_0.5": float((error < 0.5).float().mean()), "mean_abs_error": float(error.mean())}


def format_table(title: str, rows: dict[str, list[float]]) -> str:
    labels = {"x1": "x1", "x2": "x2", "x3": "x3", "memory_before": "memory (before)",
              "memory_after": "memory (after)", "gate_i": "input gate", "gate_f": "forget gate",
              "gate_o": "output gate", "y": "y"}
    lines = [title]
    for key, label in labels.items():
        digits = 0 if key in ("x1", "x2", "x3") else 2
        lines.append(f"  {label:16s}" + "".join(f"{v:8.{digits}f}" for v in rows[key]))
    return "\n".join(lines)


def plot(path: str, results: dict) -> None:
    """Cell state, y and the three gates over the slide's sequence, hand-wired beside learned."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise CommandError('--plot needs matplotlib: pip install "lstmkit[plot]"') from error
    fig, axes = plt.subplots(2, 2, figsize=(11, 6), sharex=True, sharey="row")
    for column, model in enumerate(("handwired", "learned")):
        rows = results[model]["slide"]
        steps = range(1, len(rows["y"]) + 1)
        top, bottom = axes[0][column], axes[1][column]
        top.step(steps, rows["memory_after"], where="mid", label="memory c (after the step)")
        top.plot(steps, rows["y"], "o", label="output y")
        top.bar(steps, rows["x1"], width=0.3, alpha=0.3, label="input x1")
        top.set_title(f"{model.replace('handwired', 'hand-wired')}: memory and output")
        for key, label in (("gate_i", "input gate f(z_i)"), ("gate_f", "forget gate f(z_f)"),
                           ("gate_o", "output gate f(z_o)")):
            bottom.plot(steps, rows[key], marker=".", drawstyle="steps-mid", label=label)
        bottom.set_title("gates (1 = open)")
        bottom.set_xlabel("time step (x2: " + " ".join(f"{v:g}" for v in rows["x2"]) + ";  x3: "
                          + " ".join(f"{v:g}" for v in rows["x3"]) + ")")
        bottom.set_xticks(list(steps))
    axes[0][0].legend(fontsize=8, loc="upper left")
    axes[1][0].legend(fontsize=8, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the cell state and the gates over time")
    parser.add_argument("--seed", type=int, default=0, help="seed for the learned network (default 0)")
    parser.add_argument("--steps", type=int, default=TRAIN["steps"], help="training steps (default %(default)s)")


def run(args) -> int:
    if args.steps < 1:
        raise CommandError(f"--steps must be >= 1, got {args.steps}")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise CommandError(f"--plot must name a .png file, got {args.plot!r}")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        raise CommandError(f"--plot {args.plot}: its folder does not exist")
    start = time.perf_counter()
    models = {"handwired": handwired(), "learned": learn(args.seed, args.steps)}
    results = {name: {seq: table(model, seq) for seq in memory.SLIDE} for name, model in models.items()}
    long_length = LONG["factor"] * TRAIN["length"]
    results["learned"]["long_sequences"] = long_sequence_error(models["learned"], long_length)
    results["seconds"] = time.perf_counter() - start
    if args.plot:
        plot(args.plot, results)
    if args.json:
        print(json.dumps(results))
        return 0
    print("The lecture's memory cell: x2 = 1 adds x1 to the memory, x2 = -1 resets it, x3 = 1 outputs it.\n")
    for name, title in (("handwired", "Hand-wired (the slide's weights)"), ("learned", "Learned from random sequences")):
        for seq in memory.SLIDE:
            print(format_table(f"{title}, {seq} sequence:", results[name][seq]), end="\n\n")
    long = results["learned"]["long_sequences"]
    print(f"Learned network on {long['sequences']} random sequences of {long['length']} steps "
          f"({LONG['factor']}x its training length): {100 * long['within_0.5']:.2f}% of the "
          f"{long['output_steps']} output steps within 0.5 of the target (mean error {long['mean_abs_error']:.3f}).")
    if args.plot:
        print(f"Plot written to {args.plot}")
    print(f"({results['seconds']:.1f} s)")
    return 0
