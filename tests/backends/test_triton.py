"""The Triton backend against the float64 reference.

Without a GPU its kernels run on CPU tensors under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before they are built), on tiny shapes because the interpreter is slow; with a
GPU the same cases run compiled on CUDA, and the tests marked ``gpu`` add medium shapes, bf16 and
fp16, and determinism. ``test_kernels_compile_for_sm90`` compiles the kernels for an H100 on any
machine: Triton ships the compiler and ptxas, only launching needs a device.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lstmkit
from lstmkit import backends
from lstmkit.backends import triton_gpu
from lstmkit.variant import ACTIVATION_DEFAULTS
from tests.backends.test_torch_loop import check_against_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
ACTIVATION_NAMES = sorted(ACTIVATION_DEFAULTS)
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def make(dtype=torch.float64, input_size=3, hidden_size=5, **kwargs):
    return lstmkit.LSTM(input_size, hidden_size, dtype=dtype, device=DEVICE, backend="triton", **kwargs)


def test_the_kernels_run_where_expected():
    """Interpreted on a machine without CUDA, compiled with it: never a silent fallback."""
    assert triton_gpu._interpreted() is not CUDA
    out, _ = make(peephole="diagonal")(torch.randn(3, 2, 3, dtype=torch.float64, device=DEVICE))
    assert "TritonRecurrence" in type(out.grad_fn).__name__


def test_triton_is_opt_in_until_run_on_a_gpu():
    """backend="auto" keeps CUDA tensors on the generic backend; backend="triton" selects it."""
    variant = lstmkit.Variant.create(peephole="full")
    assert backends.select("auto", torch.device("cuda"), variant) is backends.BACKENDS["torch"]
    assert backends.select("triton", torch.device("cuda"), variant) is backends.BACKENDS["triton"]


@pytest.mark.parametrize("peephole", [None, "diagonal", "full"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_each_peephole(peephole, dtype):
    check_against_reference(make(dtype, peephole=peephole), torch.randn(6, 3, 3), dtype=dtype)


@pytest.mark.parametrize("first", range(len(ACTIVATION_NAMES)))
def test_each_activation_in_each_position(first):
    """Case k puts names k, k+1, k+2 at f, g, h: every name meets every position once."""
    names = ACTIVATION_NAMES
    activations = [names[(first + position) % len(names)] for position in range(3)]
    check_against_reference(make(activations=activations), torch.randn(4, 2, 3))


def test_activation_parameters():
    activations = [("hard_sigmoid", 0.3, 0.4), ("scaled_tanh", 1.5, 0.7), ("affine", 0.8, 0.1)]
    check_against_reference(make(activations=activations), torch.randn(4, 2, 3))
    activations = [("leaky_relu", 0.2), ("elu", 0.5), ("thresholded_relu", 0.1)]
    check_against_reference(make(activations=activations, peephole="diagonal"), torch.randn(4, 2, 3))


@pytest.mark.parametrize("gates", ["if", "io", "fo", ""])
def test_gate_subsets(gates):
    check_against_reference(make(gates=gates, peephole="diagonal"), torch.randn(5, 2, 3))


@pytest.mark.parametrize(
    "options",
    [
        {"coupled_gates": True},
        {"coupled_gates": True, "peephole": "full", "gates": "if"},
        {"clip": 0.3},
        {"cell_clip": 0.2, "peephole": "full"},
        {"clip": 0.5, "cell_clip": 0.3, "peephole": "diagonal"},
        {"proj_size": 2},
        {"proj_size": 4, "peephole": "full", "hidden_size": 8},
        {"bias": False, "peephole": "diagonal", "coupled_gates": True, "clip": 0.4},
    ],
)
def test_options(options):
    check_against_reference(make(**options), torch.randn(5, 3, 3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lengths_reverse_projection(dtype):
    """Bidirectional: the reverse direction starts at each sequence's own last valid step."""
    module = make(dtype, bidirectional=True, proj_size=3, peephole="diagonal", cell_clip=1.0)
    check_against_reference(module, torch.randn(6, 3, 3), lengths=[6, 0, 2], dtype=dtype)


def test_two_layers_default_state():
    check_against_reference(make(num_layers=2, peephole="full"), torch.randn(4, 2, 3), lengths=[4, 1], hx=False)


def test_tiles_and_programs():
    """B = 17 is two programs of 16 rows; H = 70 two tiles of cells and three K slices of 32."""
    check_against_reference(make(input_size=2, hidden_size=70, peephole="full", proj_size=40),
                            torch.randn(2, 17, 2), lengths=[2, 1] * 8 + [0])


def test_padding_is_never_read():
    module = make(bidirectional=True, peephole="diagonal")
    x = torch.randn(5, 2, 3, dtype=torch.float64, device=DEVICE)
    x[3:, 0], x[1:, 1] = float("nan"), float("inf")
    x.requires_grad_()
    out, (h_n, c_n) = module(x, lengths=[3, 1])
    (out.sum() + h_n.sum() + c_n.sum()).backward()
    for t in (out, h_n, c_n, x.grad[:3, 0], x.grad[:1, 1], *(p.grad for p in module.parameters())):
        assert torch.isfinite(t).all()
    assert not x.grad[3:, 0].any() and not x.grad[1:, 1].any()


def test_inference_without_grad_gives_the_same_outputs():
    module = make(peephole="full", proj_size=2)
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        out, (h_n, c_n) = module(x)
    expected, (h_e, c_e) = module(x)
    assert out.grad_fn is None and torch.equal(out, expected) and torch.equal(h_n, h_e) and torch.equal(c_n, c_e)


def test_bad_dtype_and_device_name_the_argument():
    variant = lstmkit.Variant.create()
    f64 = {"dtype": torch.float64, "device": DEVICE}
    x, w = torch.randn(2, 1, 8, **f64), torch.zeros(8, 2, **f64)
    h, c = torch.zeros(1, 2, **f64), torch.zeros(1, 2, **f64)
    with pytest.raises(TypeError, match="x_proj: backend 'triton' supports dtypes"):
        triton_gpu.recurrence(x.to(torch.int32), h, c, w, variant)
    with pytest.raises(TypeError, match="h0: expected torch.float64"):
        triton_gpu.recurrence(x, h.float(), c, w, variant)
    with pytest.raises(TypeError, match="weight_hh: expected torch.float64 on"):
        triton_gpu.recurrence(x, h, c, w.to("meta"), variant)
    if not CUDA:
        with pytest.raises(TypeError, match="x_proj: .* on cpu, got torch.bfloat16"):
            triton_gpu.recurrence(x.bfloat16(), h, c, w, variant)


COMPILE_SCRIPT = textwrap.dedent(
    """
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    import lstmkit
    from lstmkit.backends import triton_gpu, triton_kernels

    x = torch.zeros(2, 1, 8)
    try:  # compiled kernels and CPU tensors: a clear error
        triton_gpu.recurrence(x, x[0, :, :2], x[0, :, :2], x[0].t(), lstmkit.Variant())
        raise AssertionError("no error")
    except ValueError as error:
        assert "x_proj" in str(error) and "TRITON_INTERPRET=1" in str(error), error

    class TargetOnly(DriverBase):
        # What compiling asks of a driver (an H100 as the target); launching is not asked for.
        @classmethod
        def is_active(cls): return True
        def map_python_to_cpp_type(self, ty): raise NotImplementedError
        def get_current_target(self): return GPUTarget("cuda", 90, 32)
        def get_active_torch_device(self): return torch.device("cpu")
        def get_benchmarker(self): raise NotImplementedError
        def get_current_device(self): return 0
        def get_current_stream(self, device=None): return 0

    triton.runtime.driver.set_active(TargetOnly())
    cases = [  # every activation once, every option, every dtype
        (torch.float32, None, False, {"activations": ["sigmoid", "tanh", "relu"]}),
        (torch.bfloat16, 3, False, {"activations": ["hard_sigmoid", "softplus", "elu"], "peephole": "full",
                                    "clip": 1.0, "cell_clip": 2.0, "coupled_gates": True}),
        (torch.float16, None, True, {"activations": ["leaky_relu", "scaled_tanh", "thresholded_relu"],
                                     "peephole": "diagonal", "gates": "io"}),
        (torch.float64, 3, True, {"activations": ["softsign", "identity", "affine"], "peephole": "diagonal"}),
    ]
    for dtype, proj, reverse, options in cases:
        variant = lstmkit.Variant.create(**options)
        T, B, H = 3, 20, 40
        P = proj or H
        new = lambda *shape: torch.zeros(*shape, dtype=dtype)
        peep = {None: None, "diagonal": new(3, H), "full": new(4 * H, H)}[variant.peephole]
        w_hr = None if proj is None else new(P, H)
        lengths = torch.full((B,), T)
        fwd = triton_gpu.forward_args(new(T, B, 4 * H), new(B, P), new(B, H), new(4 * H, P), peep, w_hr, lengths,
                                      variant, reverse, True)
        triton_kernels.lstm_forward.warmup(**fwd, grid=triton_gpu.grid(B))
        bwd = triton_gpu.backward_args(new(T, B, P), new(B, P), new(B, H), fwd["cs_ptr"], fwd["z_ptr"], new(4 * H, P),
                                       peep, w_hr, lengths, variant, reverse)
        triton_kernels.lstm_backward.warmup(**bwd, grid=triton_gpu.grid(B))
    print("compiled", len(cases))
    """
)


def test_kernels_compile_for_sm90(tmp_path):
    """Compiled (not interpreted) kernels for an H100, through Triton's own launch path up to the
    launch; with a fresh cache, so that they are really compiled."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "compiled 4" in result.stdout, result.stderr[-3000:]


# ------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("options", [{}, {"peephole": "diagonal"}, {"peephole": "full", "proj_size": 128}])
def test_gpu_float32_medium(options):
    """B = 16, T = 64, H = 256: many tiles, K slices and steps, float32 to SPEC's tolerances."""
    module = make(torch.float32, input_size=32, hidden_size=256, **options)
    check_against_reference(module, torch.randn(64, 16, 32), dtype=torch.float32)


@pytest.mark.gpu
@gpu
def test_gpu_float32_lengths_bidirectional():
    module = make(torch.float32, input_size=32, hidden_size=96, bidirectional=True, peephole="diagonal", clip=3.0)
    check_against_reference(module, torch.randn(64, 16, 32), lengths=torch.randint(0, 65, (16,)), dtype=torch.float32)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("peephole", [None, "full"])
def test_gpu_half_precision(dtype, peephole):
    """bf16/fp16 operands, float32 states and accumulation: within 1e-2 of the float64 reference."""
    module = make(dtype, input_size=32, hidden_size=256, peephole=peephole)
    check_against_reference(module, torch.randn(64, 16, 32), dtype=dtype)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_bitwise_deterministic(dtype):
    module = make(dtype, input_size=32, hidden_size=256, peephole="full", bidirectional=True)
    x = torch.randn(64, 16, 32, device=DEVICE, dtype=dtype)
    runs = []
    for _ in range(2):
        module.zero_grad()
        xg = x.clone().requires_grad_()
        out, (h_n, c_n) = module(xg, lengths=torch.arange(16) * 4)
        (out.square().sum() + h_n.sum() + c_n.sum()).backward()
        runs.append([out, h_n, c_n, xg.grad, *(p.grad for p in module.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_double_backward_is_refused_clearly():
    """The kernels' gradients are numbers only: create_graph=True says so instead of silently
    treating them as constants."""
    x = torch.randn(3, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    out, _ = make()(x)
    with pytest.raises(RuntimeError, match="backend='triton' has no double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
