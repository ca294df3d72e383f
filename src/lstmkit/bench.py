"""``lstmkit bench``: lstmkit on the CPU against torch.nn.LSTM and onnxruntime, in one process.

For every case (batch B, hidden = input size H, T steps, layers, directions) it times, after a
warm-up, interleaved round by round so that load on the machine hits all alike:

* torch.nn.LSTM, forward (no grad) and forward+backward (the baseline: vanilla LSTM, oneDNN);
* lstmkit.LSTM for each variant (vanilla, diagonal, full, coupled), forward and forward+backward;
* onnxruntime's LSTM operator, forward, for the variants ONNX has (vanilla, diagonal peepholes,
  coupled gates = input_forget), when ``onnxruntime`` and ``onnx`` are installed.

It prints medians and ratios (lstmkit / nn.LSTM vanilla at the same size, lstmkit / onnxruntime
with the same variant) and checks the ratios against issue 6's targets. All engines run with
the same thread count (``--threads``). With one thread the clock is the process's CPU time, which
a machine shared with other work disturbs far less than wall time; ``--clock wall`` switches.

    lstmkit bench [--quick] [--batch 1 16 64] [--hidden 128 256 512] [--variants ...]
                  [--json FILE] [--markdown FILE] [--png FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import time
from datetime import datetime, timezone

import torch

from . import __version__
from .backends import cpu_build
from .cli import CommandError
from .lstm import LSTM

VARIANTS = {
    "vanilla": {},
    "diagonal": {"peephole": "diagonal"},
    "full": {"peephole": "full"},
    "coupled": {"coupled_gates": True},
}
ONNX_VARIANTS = ("vanilla", "diagonal", "coupled")  # full peepholes have no ONNX form
TARGETS = {"every variant / nn.LSTM": 1.15, "vanilla / nn.LSTM": 1.0, "vanilla / nn.LSTM at B=1": 0.8,
           "forward / onnxruntime": 1.0}


def add_arguments(parser) -> None:
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64], help="batch sizes B")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 256, 512], help="hidden = input sizes H")
    parser.add_argument("--steps", type=int, default=128, help="sequence length T")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--stacked", type=int, nargs=2, default=[16, 256], metavar=("B", "H"),
                        help="the 2-layer bidirectional case (B, H); 0 0 leaves it out")
    parser.add_argument("--threads", type=int, default=1, help="threads for every engine")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per engine (median)")
    parser.add_argument("--min-time", type=float, default=0.0, metavar="SECONDS",
                        help="more rounds than --repeats until a size has been timed this long (cheap sizes, "
                             "whose runs vary most, get more samples)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per engine first")
    parser.add_argument("--clock", choices=["cpu", "wall"], help="cpu (default with 1 thread) or wall")
    parser.add_argument("--backend", default="auto", help="lstmkit backend to time")
    parser.add_argument("--quick", action="store_true", help="B in {1, 16}, H = 128, 3 repeats, no stacked case")
    parser.add_argument("--json", metavar="FILE", help="write all timings and ratios as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write a results page (benchmarks/RESULTS.md)")
    parser.add_argument("--png", metavar="FILE", help="bar chart of the ratios (needs matplotlib)")


def _check(args) -> None:
    if args.quick:
        args.batch, args.hidden, args.repeats, args.stacked = [1, 16], [128], 3, [0, 0]
    for name in ("steps", "threads", "repeats"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise CommandError(f"--warmup must be >= 0, got {args.warmup}")
    if not 0 <= args.min_time < math.inf:  # also NaN
        raise CommandError(f"--min-time must be a finite number of seconds >= 0, got {args.min_time}")
    for value in [*args.batch, *args.hidden]:
        if value < 1:
            raise CommandError(f"--batch and --hidden must be >= 1, got {value}")
    if min(args.stacked) < 0 or (0 in args.stacked and max(args.stacked) > 0):
        raise CommandError(f"--stacked takes B H >= 1, or 0 0, got {args.stacked}")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise CommandError(f"--variants: unknown {sorted(unknown)}; expected any of {', '.join(VARIANTS)}")
    if args.backend not in ("auto", "cpu", "torch"):
        raise CommandError(f"--backend must be auto, cpu or torch, got {args.backend!r}")
    args.clock = args.clock or ("cpu" if args.threads == 1 else "wall")


# ------------------------------------------------------------------ onnxruntime's LSTM node
def _onnx_session(module: LSTM, threads: int):
    """An onnxruntime session running ``module`` as ONNX LSTM nodes (lstmkit.onnx's export)."""
    import onnxruntime

    from .onnx import to_model

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(to_model(module).SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def _have_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ timing
def _contenders(batch, hidden, layers, bidirectional, args, use_ort):
    """(engine, variant, mode) -> a function running it once, plus max |lstmkit - ORT| per variant."""
    torch.manual_seed(0)
    shape = dict(num_layers=layers, bidirectional=bidirectional)
    baseline = torch.nn.LSTM(hidden, hidden, **shape)
    x = torch.randn(args.steps, batch, hidden)
    runs, agreement = {}, {}

    def forward(model):
        def run():
            with torch.no_grad():
                model(x)
        return run

    def forward_backward(model):
        def run():
            model.zero_grad(set_to_none=True)
            xg = x.clone().requires_grad_()
            out, (h, c) = model(xg)
            (out.sum() + h.sum() + c.sum()).backward()
        return run

    runs["nn.LSTM", "vanilla", "forward"] = forward(baseline)
    runs["nn.LSTM", "vanilla", "forward+backward"] = forward_backward(baseline)
    for variant in args.variants:
        model = LSTM.from_torch(baseline, backend=args.backend, **VARIANTS[variant])
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith(("weight_peep", "weight_ch")):
                    p.uniform_(-0.1, 0.1)
        runs["lstmkit", variant, "forward"] = forward(model)
        runs["lstmkit", variant, "forward+backward"] = forward_backward(model)
        if use_ort and variant in ONNX_VARIANTS:
            session, feed = _onnx_session(model, args.threads), {"input": x.numpy()}
            runs["onnxruntime", variant, "forward"] = lambda s=session, f=feed: s.run(None, f)
            with torch.no_grad():
                ours = model(x)[0]
            agreement[variant] = float((torch.from_numpy(session.run(None, feed)[0]) - ours).abs().max())
    return runs, agreement


def _time(runs: dict, args) -> dict:
    """Milliseconds per run of every contender, all contenders once per round, in a new order each
    round; at least --repeats rounds, and more until --min-time seconds have passed."""
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for run in runs.values():
        for _ in range(args.warmup):
            run()
    samples = {key: [] for key in runs}
    keys, order = list(runs), random.Random(0)
    rounds, deadline = 0, time.perf_counter() + args.min_time
    while rounds < args.repeats or time.perf_counter() < deadline:
        rounds += 1
        # A new order each round: who runs before whom (and leaves the caches and the heap to the
        # next) changes, so no contender always follows the same one.
        for key in order.sample(keys, len(keys)):
            start = clock()
            runs[key]()
            samples[key].append((clock() - start) * 1e3)
    return samples


def _measure(args) -> list[dict]:
    use_ort = _have_onnxruntime()
    if not use_ort:
        print("onnxruntime or onnx is not installed: no onnxruntime column (pip install \"lstmkit[onnx]\")")
    cases = [(b, h, 1, False) for b in args.batch for h in args.hidden]
    if args.stacked[0]:
        cases.append((args.stacked[0], args.stacked[1], 2, True))
    rows = []
    for batch, hidden, layers, bidirectional in cases:
        runs, agreement = _contenders(batch, hidden, layers, bidirectional, args, use_ort)
        samples = _time(runs, args)
        median = {key: statistics.median(v) for key, v in samples.items()}
        for variant in args.variants:
            row = {"batch": batch, "hidden": hidden, "steps": args.steps, "layers": layers,
                   "bidirectional": bidirectional, "variant": variant}
            for mode, tag in (("forward", "fwd"), ("forward+backward", "fwdbwd")):
                row[f"{tag}_ms"] = median["lstmkit", variant, mode]
                row[f"nn_{tag}_ms"] = median["nn.LSTM", "vanilla", mode]
                row[f"{tag}_ratio"] = row[f"{tag}_ms"] / row[f"nn_{tag}_ms"]
                row[f"{tag}_runs_ms"] = samples["lstmkit", variant, mode]
            if ("onnxruntime", variant, "forward") in median:
                row["ort_fwd_ms"] = median["onnxruntime", variant, "forward"]
                row["ort_ratio"] = row["fwd_ms"] / row["ort_fwd_ms"]
                row["ort_max_abs_diff"] = agreement[variant]
            rows.append(row)
            _print_row(row, first=variant == args.variants[0])
    return rows


# ------------------------------------------------------------------ reporting
HEADER = ("| B | H | layers | variant | fwd ms | fwd / nn.LSTM | fwd+bwd ms | fwd+bwd / nn.LSTM "
          "| onnxruntime fwd ms | fwd / onnxruntime |")


def _case(row) -> str:
    return f"{row['layers']}{' bidir' if row['bidirectional'] else ''}"


def _table_line(row) -> str:
    ort = (f"{row['ort_fwd_ms']:.2f} | {row['ort_ratio']:.2f}" if "ort_ratio" in row else "- | -")
    return (f"| {row['batch']} | {row['hidden']} | {_case(row)} | {row['variant']} | {row['fwd_ms']:.2f} "
            f"| {row['fwd_ratio']:.2f} | {row['fwdbwd_ms']:.2f} | {row['fwdbwd_ratio']:.2f} | {ort} |")


def _print_row(row, first: bool) -> None:
    if first:
        print(f"B={row['batch']} H={row['hidden']} layers={_case(row)}: nn.LSTM fwd {row['nn_fwd_ms']:.2f} ms, "
              f"fwd+bwd {row['nn_fwdbwd_ms']:.2f} ms", flush=True)
    ort = f"  vs onnxruntime {row['ort_ratio']:.2f}" if "ort_ratio" in row else ""
    print(f"  {row['variant']:<9} fwd {row['fwd_ms']:9.2f} ms ({row['fwd_ratio']:.2f})  "
          f"fwd+bwd {row['fwdbwd_ms']:9.2f} ms ({row['fwdbwd_ratio']:.2f}){ort}", flush=True)


def acceptance(rows: list[dict]) -> list[tuple[str, float, float, str]]:
    """(target, limit, worst ratio, where) for each of issue 6's ratio targets."""
    checks = []

    def worst(name, limit, pairs):
        pairs = list(pairs)
        if pairs:
            ratio, where = max(pairs)
            checks.append((name, limit, ratio, where))

    def where(row, what):
        return f"{what} B={row['batch']} H={row['hidden']} layers={_case(row)} {row['variant']}"

    def ratios(selected):
        return [(r[f"{t}_ratio"], where(r, t)) for r in selected for t in ("fwd", "fwdbwd")]

    vanilla = [r for r in rows if r["variant"] == "vanilla"]
    worst("every variant / nn.LSTM", TARGETS["every variant / nn.LSTM"], ratios(rows))
    worst("vanilla / nn.LSTM", TARGETS["vanilla / nn.LSTM"], ratios(vanilla))
    worst("vanilla / nn.LSTM at B=1", TARGETS["vanilla / nn.LSTM at B=1"], ratios(r for r in vanilla if r["batch"] == 1))
    worst("forward / onnxruntime", TARGETS["forward / onnxruntime"],
          [(r["ort_ratio"], where(r, "fwd")) for r in rows if "ort_ratio" in r])
    return checks


def _machine(args) -> dict:
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": args.threads, "clock": args.clock,
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort_version,
            "lstmkit": __version__, "backend": args.backend, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": _command(args)}


def _command(args) -> str:
    """The command line that reproduces this run: the options that differ from the defaults."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    defaults["clock"] = "cpu" if args.threads == 1 else "wall"
    parts = ["lstmkit bench"]
    for name in ("batch", "hidden", "steps", "variants", "stacked", "threads", "repeats", "min_time", "warmup",
                 "clock", "backend", "markdown"):
        value = getattr(args, name)
        if value != defaults[name]:
            parts += [f"--{name.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return " ".join(parts)


def _markdown(rows, checks, machine) -> str:
    lines = ["# lstmkit on the CPU: benchmark results", "",
             f"Regenerate with: `{machine['command']}`", "",
             "Medians over interleaved runs after warm-up, all engines in one process with the same thread count. "
             "Ratios are lstmkit time / torch.nn.LSTM (vanilla) time at the same size, and lstmkit forward / "
             "onnxruntime's LSTM forward with the same variant. Input size = hidden size. With one thread the clock "
             "is the process's CPU time (the machine may be shared); benchmarks/NOTES-cpu.md says how these were "
             "measured and where the time goes.", "",
             "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine.items() if k != "command"]
    lines += ["", "## Targets (issue 6)", "", "| target | limit | worst ratio | where | met |", "|---|---|---|---|---|"]
    lines += [f"| {n} | <= {lim} | {r:.2f} | {w} | {'yes' if r <= lim else 'no'} |" for n, lim, r, w in checks]
    diffs = [r["ort_max_abs_diff"] for r in rows if "ort_max_abs_diff" in r]
    if diffs:
        lines += ["", f"onnxruntime ran the same weights: max |lstmkit - onnxruntime| over all outputs = {max(diffs):.1e}."]
    lines += ["", "## All cases", "", HEADER, "|" + "---|" * 10]
    lines += [_table_line(r) for r in rows]
    return "\n".join(lines) + "\n"


def _png(rows, path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise CommandError('--png needs matplotlib: pip install matplotlib') from error
    labels = [f"B{r['batch']} H{r['hidden']} {_case(r)}\n{r['variant']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 4.5))
    xs = range(len(rows))
    ax.bar([i - 0.2 for i in xs], [r["fwd_ratio"] for r in rows], 0.4, label="forward")
    ax.bar([i + 0.2 for i in xs], [r["fwdbwd_ratio"] for r in rows], 0.4, label="forward+backward")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(TARGETS["every variant / nn.LSTM"], color="r", lw=0.8, ls="--", label="target 1.15")
    ax.set_xticks(list(xs), labels, rotation=90, fontsize=6)
    ax.set_ylabel("lstmkit time / nn.LSTM time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(args) -> int:
    _check(args)
    torch.set_num_threads(args.threads)
    machine = _machine(args)
    print(f"lstmkit bench: {machine['cpu']}, {args.threads} thread(s), clock={args.clock}, "
          f"T={args.steps}, median of {args.repeats} runs"
          + (f" or more (each size timed for {args.min_time:g} s at least)" if args.min_time else ""), flush=True)
    rows = _measure(args)
    machine["kernel instruction set"] = cpu_build.isa() if cpu_build.loaded() else "none (no kernel)"
    checks = acceptance(rows)
    print("\ntargets:")
    for name, limit, ratio, where in checks:
        print(f"  {name:<26} <= {limit:<5} worst {ratio:.2f} ({where}): {'met' if ratio <= limit else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows,
                       "targets": [dict(zip(("target", "limit", "worst", "where"), c)) for c in checks]}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(_markdown(rows, checks, machine))
    if args.png:
        _png(rows, args.png)
    return 0
