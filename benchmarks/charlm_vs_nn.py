"""Character-level LM: lstmkit.LSTM against torch.nn.LSTM, same everything else.

    python benchmarks/charlm_vs_nn.py --data ../shared/data/tinyshakespeare.txt --out bench/charlm
    python benchmarks/charlm_vs_nn.py ... --only lstmkit &  python benchmarks/charlm_vs_nn.py ... --only nn
    python benchmarks/charlm_vs_nn.py ... --report          # the table and plot of two finished runs

Both runs go through ``lstmkit train``'s Trainer with the same settings (size, seed, data order,
optimizer, steps); the only difference is the LSTM module. The initial weights are identical
(checked). Prints validation bits per character at each evaluation and the relative difference.
"""

import argparse
import json
from pathlib import Path

import torch

from lstmkit import config as cfg
from lstmkit.run import RunDir, build_model
from lstmkit.tasks.charlm import CharLMTask
from lstmkit.train import Trainer

NN_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "dropout", "bidirectional", "proj_size")


def nn_lstm(**kwargs) -> torch.nn.LSTM:
    """torch.nn.LSTM from lstmkit.LSTM's arguments (the vanilla variant only)."""
    return torch.nn.LSTM(**{name: kwargs[name] for name in NN_ARGS})


def train(which: str, config: dict, out: Path) -> None:
    other = build_model(CharLMTask(config), config, nn_lstm if which == "lstmkit" else None).state_dict()
    trainer = Trainer.new("charlm", config, str(out / which), lstm_class=None if which == "lstmkit" else nn_lstm)
    assert all(torch.equal(v, other[k]) for k, v in trainer.module.state_dict().items()), "initial weights differ"
    trainer.fit()


def report(out: Path) -> None:
    curves = {}
    for which in ("lstmkit", "nn"):
        run = RunDir(out / which)
        curves[which] = {r["step"]: r for r in run.metrics() if r["split"] == "val"}
    steps = sorted(set(curves["lstmkit"]) & set(curves["nn"]))
    rows = [(s, curves["lstmkit"][s]["bpc"], curves["nn"][s]["bpc"]) for s in steps]
    print("| step | lstmkit.LSTM val bpc | torch.nn.LSTM val bpc | relative difference |")
    print("|---|---|---|---|")
    for step, a, b in rows:
        print(f"| {step} | {a:.4f} | {b:.4f} | {(a - b) / b:+.2%} |")
    for which in ("lstmkit", "nn"):
        last = curves[which][steps[-1]]
        print(f"{which}: {steps[-1]} steps in {last['elapsed']:.0f} s")
    (out / "comparison.json").write_text(json.dumps(
        {"rows": rows, "elapsed": {w: curves[w][steps[-1]]["elapsed"] for w in curves}}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(steps, [a for _, a, _ in rows], marker=".", label="lstmkit.LSTM")
    axis.plot(steps, [b for _, _, b in rows], marker="x", linestyle="--", label="torch.nn.LSTM")
    axis.set_xlabel("step")
    axis.set_ylabel("validation bits per character")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "charlm_vs_nn.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", default="bench/charlm")
    parser.add_argument("--only", choices=("lstmkit", "nn"))
    parser.add_argument("--report", action="store_true", help="only print and plot two finished runs")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    out = Path(args.out)
    if not args.report:
        settings = {"data": args.data, "hidden_size": args.hidden_size, "batch_size": args.batch_size,
                    "seq_len": args.seq_len, "steps": args.steps, "eval_every": args.eval_every,
                    "threads": args.threads, "device": "cpu"}
        config = cfg.resolve(CharLMTask.defaults, {}, settings)
        out.mkdir(parents=True, exist_ok=True)
        for which in (args.only,) if args.only else ("lstmkit", "nn"):
            train(which, config, out)
    if not args.only:
        report(out)


if __name__ == "__main__":
    main()
