"""Time lstmkit's generic backend against torch.nn.LSTM, side by side in one process.

    python benchmarks/generic_vs_nn.py [--batch 16 --steps 128 --hidden 256 --repeats 7 --threads 1]

Prints median forward and forward+backward times and the ratio lstmkit / nn.LSTM (vanilla).
"""

import argparse
import statistics
import time

import torch

import lstmkit


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for all models (default 1: with 2 threads on a shared machine "
                             "OpenMP spinning makes timings swing by 100x)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.hidden
    x = torch.randn(args.steps, args.batch, size)
    baseline = torch.nn.LSTM(size, size)
    models = {
        "nn.LSTM": baseline,
        "lstmkit vanilla": lstmkit.LSTM.from_torch(baseline, backend="torch"),
        "lstmkit diagonal peephole": lstmkit.LSTM(size, size, peephole="diagonal", backend="torch"),
    }

    def forward(model):
        with torch.no_grad():
            model(x)

    def forward_backward(model):
        xg = x.clone().requires_grad_()
        out, (h, c) = model(xg)
        out.sum().backward()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"B={args.batch} T={args.steps} H=I={size}, median of {args.repeats}")
    print(f"{'model':28s} {'fwd ms':>9s} {'ratio':>6s} {'fwd+bwd ms':>11s} {'ratio':>6s}")
    base = None
    for name, model in models.items():
        f = median_ms(lambda: forward(model), args.repeats)
        fb = median_ms(lambda: forward_backward(model), args.repeats)
        base = base or (f, fb)
        print(f"{name:28s} {f:9.2f} {f / base[0]:6.2f} {fb:11.2f} {fb / base[1]:6.2f}")


if __name__ == "__main__":
    main()
