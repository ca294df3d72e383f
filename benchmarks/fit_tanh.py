"""Fit the float32 tanh of the fused CPU kernel (csrc/lstm_math.h: vtanh, vsigmoid) and check it.

tanh(x) ~ x P(x^2) / Q(x^2) on [-9, 9] with P of degree 6 and Q of degree 3 (Q(0) = P(0) = 1),
fitted by iteratively reweighted linear least squares on the relative error (Loeb's linearisation
with Lawson-style weights), in a scaled variable u = x^2 / 81 to keep the system well conditioned.
Then the float32 Horner evaluation the kernel does is emulated and compared with float64 tanh and
sigmoid(x) = 1/2 + tanh(x/2)/2. Run: python benchmarks/fit_tanh.py (numpy only, a few seconds).
"""

import numpy as np

LIMIT = 9.0  # tanh(9) = 1 - 3e-8: rounds to 1 in float32


def fit(p_degree: int = 6, q_degree: int = 3, iterations: int = 30):
    x = np.linspace(1e-6, LIMIT, 200_001)
    s, f = x * x, np.tanh(x) / x  # fit f(s) = P(s) / Q(s)
    u = s / LIMIT**2
    weights, q_prev = np.ones_like(s), np.ones_like(s)
    for _ in range(iterations):
        a = np.concatenate([np.stack([u**k for k in range(p_degree + 1)], 1),
                            -np.stack([f * u**k for k in range(1, q_degree + 1)], 1)], 1)
        w = weights / q_prev
        sol = np.linalg.lstsq(a * w[:, None], f * w, rcond=None)[0]
        scale = LIMIT ** (-2.0 * np.arange(max(p_degree, q_degree) + 1))
        p = sol[: p_degree + 1] * scale[: p_degree + 1]
        q = np.concatenate([[1.0], sol[p_degree + 1:]]) * scale[: q_degree + 1]
        q_prev = np.polyval(q[::-1], s)
        rel = np.abs(np.polyval(p[::-1], s) / q_prev - f) / f
        weights = weights * (1 + rel / rel.max())
    return p.astype(np.float32), q.astype(np.float32)


def tanh32(x: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The kernel's evaluation: clamp, Horner with fused multiply-adds, divide, clamp to [-1, 1]."""
    x = np.clip(x, -LIMIT, LIMIT).astype(np.float32)
    s = (x * x).astype(np.float32)
    num, den = np.full_like(s, p[-1]), np.full_like(s, q[-1])
    for c in p[-2::-1]:
        num = (num.astype(np.float64) * s + c).astype(np.float32)
    for c in q[-2::-1]:
        den = (den.astype(np.float64) * s + c).astype(np.float32)
    return np.clip((x * num).astype(np.float32) / den, -1, 1).astype(np.float32)


if __name__ == "__main__":
    p, q = fit()
    x = np.linspace(-30, 30, 2_000_001).astype(np.float32)
    tanh = tanh32(x, p, q)
    sigmoid = (0.5 + 0.5 * tanh32((0.5 * x).astype(np.float32), p, q)).astype(np.float32)
    x64 = x.astype(np.float64)
    print("P (ascending powers of x^2):", ", ".join(f"{c!r}" for c in p.tolist()))
    print("Q (ascending powers of x^2):", ", ".join(f"{c!r}" for c in q.tolist()))
    print(f"max |tanh32 - tanh|       = {np.abs(tanh - np.tanh(x64)).max():.2e}")
    print(f"max |sigmoid32 - sigmoid| = {np.abs(sigmoid - 1 / (1 + np.exp(-x64))).max():.2e}")
