"""The fused CPU backend against the float64 reference, for every option and combination.

The generic backend's tests (tests/backends/test_torch_loop.py) run here a second time with
``backend="cpu"``; the tests below add what they do not reach: the row and column tails of the
kernel's matrix products (csrc/gemm.h), several threads, the fallback without a compiler.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

import lstmkit
from lstmkit import backends
from lstmkit.backends import cpu, cpu_build
from tests.backends import test_torch_loop as generic
from tests.helpers import assert_close, ran_the_kernel, relative_error
from tests.backends.test_torch_loop import (  # noqa: F401  (collected here, with backend="cpu")
    check_against_reference,
    test_each_activation_in_each_position,
    test_each_gate_subset,
    test_each_peephole,
    test_float32_long_sequences,
    test_lengths_bidirectional_multilayer_projection,
    test_options,
    test_random_combinations,
)


@pytest.fixture(autouse=True, scope="module")
def fused_backend():
    """Point the generic tests' module factory at the fused backend, for this module only."""
    assert cpu.available(), "the fused CPU kernel did not build (is a C++ compiler installed?)"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generic, "make", lambda dtype=torch.float64, **kw: lstmkit.LSTM(3, 5, dtype=dtype, backend="cpu", **kw))
        yield


def test_auto_selects_the_fused_backend_on_cpu():
    variant = lstmkit.Variant.create(peephole="full")
    assert backends.select("auto", torch.device("cpu"), variant) is backends.BACKENDS["cpu"]


def test_the_kernel_runs(monkeypatch):
    """The tests above compare the fused path, not a silent fallback to the generic one."""
    calls = []
    monkeypatch.setattr(cpu.torch_loop, "recurrence", lambda *a, **k: calls.append(1))
    module = lstmkit.LSTM(3, 5, backend="cpu", peephole="diagonal")
    out, _ = module(torch.randn(4, 2, 3))
    assert not calls and out.grad_fn is not None and "FusedRecurrence" in type(out.grad_fn).__name__


OPTIONS = [
    {},
    {"peephole": "diagonal"},
    {"peephole": "full"},
    {"coupled_gates": True, "peephole": "diagonal"},
    {"clip": 0.4, "cell_clip": 0.5, "peephole": "full", "gates": "if"},
    {"activations": ["hard_sigmoid", "softsign", "softplus"], "proj_size": 7},
]


@pytest.mark.parametrize("steps", [3, 9])  # the BLAS (too few steps to repay packing), csrc/gemm.h
@pytest.mark.parametrize("batch", [1, 6, 7, 11])  # rows of the micro-kernel: AVX2 4 + 2, 4 + 3; AVX-512 6, 7, 8 + 3
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gemm_tiles_and_tails(options, batch, steps, dtype):
    """H = 19: 4H = 76 columns are full panels (AVX2: 3 of 24 floats, 6 of 12 doubles; AVX-512: 2 of
    32 floats, 4 of 16 doubles, one row 1 of 64 / 2 of 32) and a tail. K = 19 (or 38 with full
    peepholes, 7 with a projection) is odd for the one-row kernel's chains."""
    module = lstmkit.LSTM(11, 19, dtype=dtype, backend="cpu", bidirectional=True, **options)
    lengths = None if batch == 1 else [steps, 0, 2, steps, 1, steps - 1, 3, 1, steps, 2, steps][:batch]
    check_against_reference(module, torch.randn(steps, batch, 11), lengths=lengths, dtype=dtype)


@pytest.mark.parametrize("options", OPTIONS[:3])
def test_one_row_against_large_weights(options):
    """B = 1 with recurrent weights of more than half the L2 cache (here 2.1 MB, against 2 MiB of L2
    or less on most CPUs): the forward reads them unpacked (gemv).
    H = 257: K = 257 is not a multiple of the vector width, N = 1028 not of the 8 rows."""
    module = lstmkit.LSTM(3, 257, dtype=torch.float64, backend="cpu", **options)
    check_against_reference(module, torch.randn(6, 1, 3), dtype=torch.float64)


@pytest.mark.parametrize("gates, coupled", [("fo", False), ("io", False), ("i", False), ("if", True)])
@pytest.mark.parametrize("batch, hidden, dtype", [(6, 19, torch.float32), (1, 19, torch.float64), (1, 257, torch.float64)])
def test_products_skip_unused_gate_blocks(gates, coupled, batch, hidden, dtype):
    """The forward's products compute only the gate blocks the variant uses (csrc/lstm_cpu.cpp:
    forward_impl): the first block missing, one in the middle, two, the coupled forget gate. Packed
    (B=6, H=19 with a tail panel in each block; B=1 H=19) and one row unpacked (B=1, H=257: 2.1 MB),
    outputs and every gradient against the float64 reference; inference equal to training."""
    module = lstmkit.LSTM(5, hidden, dtype=dtype, backend="cpu", gates=gates, coupled_gates=coupled,
                          peephole="diagonal")
    x = torch.randn(6, batch, 5, dtype=dtype)
    check_against_reference(module, x, dtype=dtype)
    trained = module(x)
    with torch.no_grad():
        inferred = module(x)
    for a, b in zip((trained[0], *trained[1]), (inferred[0], *inferred[1])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("steps", [2, 5])  # forward: the BLAS on the weights as they are; fused and packed
@pytest.mark.parametrize("options", OPTIONS[:4])
def test_many_rows_against_large_weights(options, steps):
    """B = 32 with recurrent weights of 4 MiB and more (here 4.2 MB; 8.4 with full peepholes, as two
    parts; csrc/gemm.h: BLAS_ROWS). Forward: 2 steps by the BLAS; 5 steps in one packed product
    with the input projection (lstm_cpu.cpp: FUSE_ROWS), 4.3 MB and more, prefetched. Backward by
    the BLAS on a contiguous copy; with coupled gates of R's used rows, two parts of 1.4 and 2.8 MB
    (H = 420: three of its four gate blocks still make 4 MiB). Inference alike."""
    hidden = 420 if options.get("coupled_gates") else 363
    module = lstmkit.LSTM(3, hidden, dtype=torch.float64, backend="cpu", **options)
    x = torch.randn(steps, 32, 3, dtype=torch.float64)
    check_against_reference(module, x, dtype=torch.float64)
    trained = module(x)
    with torch.no_grad():
        inferred = module(x)
    for a, b in zip((trained[0], *trained[1]), (inferred[0], *inferred[1])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options", OPTIONS[:3])
def test_packed_weights_beyond_l2(options):
    """B = 16 against recurrent weights of 4.2 MB (8.4 with full peepholes): packed panels read from
    beyond L2, the next one prefetched while each runs (csrc/gemm.h: PREFETCH_BYTES); backward's
    products over R (4H, H) too."""
    module = lstmkit.LSTM(3, 363, dtype=torch.float64, backend="cpu", **options)
    check_against_reference(module, torch.randn(5, 16, 3, dtype=torch.float64), dtype=torch.float64)


@pytest.mark.parametrize(
    "options",
    [{"proj_size": 3}, {"peephole": "full", "bidirectional": True}, {"coupled_gates": True, "peephole": "full"},
     {"gates": "f"}],
)
def test_weight_gradients_over_many_rows(options):
    """T B = 1040 rows: the weight gradients as (x^T dz)^T (csrc/lstm_cpu.cpp: weight_grad), with a
    projection's W_hr and with full peepholes' Q among them, and over the used gate blocks only
    (coupled: two blocks; no input and output gates: one block in the middle)."""
    module = lstmkit.LSTM(4, 6, dtype=torch.float64, backend="cpu", **options)
    check_against_reference(module, torch.randn(65, 16, 4), dtype=torch.float64)


def test_kernel_refuses_weights_of_the_wrong_shape():
    """The kernel sizes its products from H and P, not from the weights: weights of another shape
    (such as the concatenated [R, Q] it once took) are refused, not read past their end."""
    H, P, B = 4, 4, 2
    flags, params = cpu._codes(lstmkit.Variant.create(peephole="full"))
    x_proj, h0, c0 = torch.randn(3, B, 4 * H), torch.zeros(B, P), torch.zeros(B, H)
    r, q, empty = torch.randn(4 * H, P), torch.randn(4 * H, H), torch.empty(0)
    ops, lens = cpu_build.load(), torch.empty(0, dtype=torch.int64)
    ops.forward(x_proj, empty, empty, h0, c0, r, q, empty, lens, flags, params, False, False)  # the right shapes run
    ops.forward(x_proj, torch.randn(4 * H, 4 * H), empty, h0, c0, r, q, empty, lens, flags, params, False, False)
    for w_rec, peep in ((torch.cat([r, q], 1), q), (r, empty), (r, torch.randn(3, H))):
        with pytest.raises(RuntimeError, match="must be"):
            ops.forward(x_proj, empty, empty, h0, c0, w_rec, peep, empty, lens, flags, params, False, False)
    with pytest.raises(RuntimeError, match="bias must be"):  # the bias too: (4H,) or empty
        ops.forward(x_proj, empty, torch.randn(3), h0, c0, r, q, empty, lens, flags, params, False, False)
    with pytest.raises(RuntimeError, match="W_ih must be"):  # and W_ih: (4H, I) for an input x (T, B, I)
        ops.forward(x_proj, torch.randn(4 * H, 3), empty, h0, c0, r, q, empty, lens, flags, params, False, False)
    with pytest.raises(RuntimeError, match="W_ih must have"):  # of x's dtype
        ops.forward(x_proj, torch.randn(4 * H, 4 * H, dtype=torch.float64), empty, h0, c0, r, q, empty, lens, flags,
                    params, False, False)
    # h of P = 2 columns: W_hr (P, H) it must have (without it, a step wrote H values into P);
    # the states and lengths must fit the batch
    r2, h2 = torch.randn(4 * H, 2), torch.zeros(B, 2)
    ops.forward(x_proj, empty, empty, h2, c0, r2, q, torch.randn(2, H), lens, flags, params, False, False)
    for w_hr in (empty, torch.randn(H, 2)):
        with pytest.raises(RuntimeError, match="W_hr must be"):
            ops.forward(x_proj, empty, empty, h2, c0, r2, q, w_hr, lens, flags, params, False, False)
    for h, c, lengths in ((h0[:1], c0, lens), (h0, c0[:, :2], lens), (h0, c0, torch.tensor([3]))):
        with pytest.raises(RuntimeError, match="must be"):
            ops.forward(x_proj, empty, empty, h, c, r, q, empty, lengths, flags, params, False, False)


@pytest.mark.parametrize(("batch", "options"), [(16, OPTIONS[1]), (16, OPTIONS[2]), (70, OPTIONS[5])])
def test_threads_share_out_panels(batch, options):
    """With two threads the (row block, panel) pieces of each product are shared out: the forward
    (only csrc/gemm.h products) is the same bit for bit, and all of it is right. B = 70 is two
    blocks of rows (64 + 6)."""
    module = lstmkit.LSTM(16, 64, backend="cpu", **options)  # 4H = 256: 11 panels of 24 columns
    x = torch.randn(20, batch, 16)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                out, (h, c) = module(x)
            outputs.append([out, h, c])
        check_against_reference(module, x, dtype=torch.float32)  # gradients too, with two threads
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*outputs):
        assert torch.equal(one, two)


@pytest.mark.parametrize("options", [*OPTIONS[:3], {"proj_size": 5, "bidirectional": True}, OPTIONS[5]])
def test_inference_path_equals_training_path(options):
    """Without anything to differentiate the kernel is called directly (nothing saved; without lengths
    or full peepholes the state is not copied: h from y, c in two alternating buffers): same outputs."""
    module = lstmkit.LSTM(5, 12, num_layers=2, backend="cpu", **options)
    x = torch.randn(7, 3, 5)
    trained = module(x)
    with torch.no_grad():
        inferred = module(x)
    assert trained[0].grad_fn is not None and inferred[0].grad_fn is None
    for a, b in zip((trained[0], *trained[1]), (inferred[0], *inferred[1])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options", OPTIONS[:4])
def test_float32_200_steps_batch_16(options):
    module = lstmkit.LSTM(8, 24, dtype=torch.float32, backend="cpu", **options)
    check_against_reference(module, torch.randn(200, 16, 8), dtype=torch.float32)


@pytest.mark.parametrize(
    ("dtype", "options"),
    [(torch.float64, {}), (torch.float32, {"bias": False, "batch_first": True}), (torch.float32, {"frozen": True})],
)
def test_large_input_projection(dtype, options):
    """Input projections of 4 MiB (weights too large to fuse it into the steps' product: one product
    over all steps, into huge pages): same numbers as the generic backend's F.linear (with and without
    bias, from a non-contiguous batch_first input, with frozen input weights)."""
    frozen = options.pop("frozen", False)
    module = lstmkit.LSTM(8, 256, num_layers=2, dtype=dtype, backend="cpu", **options)
    generic = lstmkit.LSTM(8, 256, num_layers=2, dtype=dtype, backend="torch", **options)
    generic.load_state_dict(module.state_dict())
    for m in (module, generic):
        m.weight_ih_l0.requires_grad_(not frozen)
    shape = (32 * 8 // dtype.itemsize, 16, 8)  # (T * 16, 4 * 256) = 4 MiB
    x = torch.randn(*shape, dtype=dtype).transpose(0, 1) if module.batch_first else torch.randn(*shape, dtype=dtype)
    results = []
    for m in (module, generic):
        xg = x.clone().requires_grad_()
        out, (h, c) = m(xg)
        (out.square().sum() + h.sum() + c.sum()).backward()
        results.append([out, h, c, xg.grad, *(p.grad for p in m.parameters() if p.requires_grad)])
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for actual, expected in zip(*results):
        assert_close(actual, expected, tol)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize(("batch", "dtype"), [(8, torch.float64), (9, torch.float32), (17, torch.float64), (3, torch.float32)])
def test_input_projection_inside_the_steps_product(options, batch, dtype):
    """From 4 rows (AVX2 or AVX-512), with small weights, the kernel's product per step is
    [x^t, h^{t-1} (, c^{t-1})] [W_ih, R (, Q)]^T, its left-hand side from two buffers (csrc/gemm.h:
    Lhs): I = 5 columns of x^t, then the state. 9 and 17 rows leave one-row tiles (the
    micro-kernel's accumulator chains across the two blocks); 3 rows project first."""
    module = lstmkit.LSTM(5, 19, dtype=dtype, backend="cpu", bidirectional=True, **options)
    lengths = [6, 2, 6, 0, 5, 6, 1, 6, 3][:batch] + [6] * max(0, batch - 9)
    check_against_reference(module, torch.randn(6, batch, 5), lengths=lengths, dtype=dtype)
    x = torch.randn(6, batch, 5, dtype=dtype)
    trained = module(x)
    with torch.no_grad():  # the inference path reads h^{t-1} from y: another block than training's
        inferred = module(x)
    for a, b in zip((trained[0], *trained[1]), (inferred[0], *inferred[1])):
        assert torch.equal(a, b)


def test_training_after_inference_mode():
    """A first call under inference_mode, then training: nothing the kernel's calls share (such as the
    empty tensors for absent arguments) may be an inference tensor, which backward cannot save."""
    module = lstmkit.LSTM(3, 5, backend="cpu", proj_size=2)
    x = torch.randn(4, 2, 3)
    cpu._empty.cache_clear()  # as in a fresh process whose first call is this one
    with torch.inference_mode():
        inferred = module(x)[0]
    out = module(x)[0]
    out.sum().backward()
    assert torch.equal(out.detach(), inferred) and module.weight_ih_l0.grad is not None


def test_float32_gates_over_their_range():
    """The float32 sigmoid and tanh of the kernel's gate pass (rational functions, csrc/lstm_math.h)
    against float64, for gate inputs from -30 to 30: z = x (W_ih = identity, no recurrent or bias
    term), so c^t = tanh(z_g) sigmoid(z_i) + c^{t-1} sigmoid(z_f), h^t = tanh(c^t) sigmoid(z_o)."""
    hidden, steps = 37, 5  # 37 cells: whole vectors and a tail
    module = lstmkit.LSTM(4 * hidden, hidden, backend="cpu", bias=False)
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.eye(4 * hidden))
        module.weight_hh_l0.zero_()
    z = torch.linspace(-30, 30, steps * 2001 * 4 * hidden).reshape(steps, 2001, 4 * hidden)
    z = z[..., torch.randperm(4 * hidden)]  # every gate sees the whole range
    with torch.no_grad():
        out, (_, c) = module(z)
    z64 = z.double()
    zi, zf, zg, zo = z64.chunk(4, dim=-1)
    c_run = torch.zeros_like(zg[0])
    hs = []
    for t in range(steps):
        c_run = torch.tanh(zg[t]) * torch.sigmoid(zi[t]) + c_run * torch.sigmoid(zf[t])
        hs.append(torch.tanh(c_run) * torch.sigmoid(zo[t]))
    assert (out.double() - torch.stack(hs)).abs().max() < 6e-7  # measured 3.5e-7
    assert (c[0].double() - c_run).abs().max() < 2e-6  # |c| up to 5 after 5 steps; measured 1.1e-6
    assert out.abs().max() <= 1


@pytest.mark.parametrize("scale", [100, 1000])
def test_float32_gradients_of_saturated_gates(scale):
    """Inputs scaled up until most gates saturate: float32 gradients no further from float64's
    than torch.nn.LSTM's float32 gradients are. The float tanh is exactly +-1 beyond |x| = 9, where
    float's tanh is within an ulp of it, so a saturated unit passes no gradient; with +-(1 - 1.8e-7) it
    passed 3.6e-7 of it (2.2-3.8x nn.LSTM's error at scale 100 over 6 seeds; now 0.9-1.2x)."""
    torch.manual_seed(0)
    module = lstmkit.LSTM(16, 32, backend="cpu")
    baseline = module.to_torch()
    module64 = lstmkit.LSTM.from_torch(baseline.double(), backend="cpu")
    x = torch.randn(50, 8, 16) * scale
    grads = []
    for m, dtype in ((module, torch.float32), (baseline.float(), torch.float32), (module64, torch.float64)):
        out, (_, c) = m(x.to(dtype))
        (out.sum() + c.sum()).backward()
        grads.append(torch.cat([p.grad.double().flatten() for p in m.parameters()]))
    assert relative_error(grads[0], grads[2]) <= 1.5 * relative_error(grads[1], grads[2])


def test_large_buffers_are_reused_only_when_free():
    """The kernel's pool of large buffers: a result still held is never handed out again; a freed
    one is, with correct results; release_memory() empties the pool."""
    module = lstmkit.LSTM(8, 256, backend="cpu")  # y: (T, 16, 256) float32 = 4 MiB at T = 256
    x1, x2 = torch.randn(256, 16, 8), torch.randn(256, 16, 8)
    cpu.release_memory()  # an empty pool: blocks of earlier tests would be handed out too
    with torch.no_grad():
        out1 = module(x1)[0]
        kept = out1.clone()
        out2 = module(x2)[0]
        assert out1.data_ptr() != out2.data_ptr() and torch.equal(out1, kept)
        freed = out1.data_ptr()
        del out1
        again = module(x1)[0]
    assert again.data_ptr() == freed and torch.equal(again, kept)  # the freed block, handed out again
    expected = lstmkit.LSTM(8, 256, backend="torch")
    expected.load_state_dict(module.state_dict())
    with torch.no_grad():
        assert_close(out2, expected(x2)[0], 1e-5)
    cpu.release_memory()
    with torch.no_grad():
        assert torch.equal(module(x1)[0], kept)


def test_pool_makes_room_by_freeing_its_oldest_blocks():
    """The pool keeps up to 256 MiB (csrc/pool.h: POOL_BYTES): five freed 64 MiB blocks leave the
    four given back last, and the oldest is not handed out again."""
    ops = cpu_build.load()
    a, b = torch.ones(4096, 1), torch.ones(1, 4096)  # a product of 64 MiB, from the pool
    cpu.release_memory()
    blocks = [ops.matmul(a, b) for _ in range(5)]
    pointers = [block.data_ptr() for block in blocks]
    assert len(set(pointers)) == 5
    for i in range(5):  # given back oldest first
        blocks[i] = None
    again = [ops.matmul(a, b) for _ in range(4)]
    assert {block.data_ptr() for block in again} == set(pointers[1:])
    assert all(torch.equal(block, torch.ones(4096, 4096)) for block in again)
    del again
    cpu.release_memory()


FORK_WHILE_POOLING = """
import os, sys, threading, time, torch
from lstmkit.backends import cpu, cpu_build
torch.set_num_threads(1)
ops = cpu_build.load()
a, b = torch.randn(1024, 1), torch.randn(1, 1024)  # a product of 4 MiB: a pooled block
stop = threading.Event()
def churn():  # fills the pool and empties it, holding its lock while it frees (the GIL released)
    while not stop.is_set():
        blocks = [ops.matmul(a, b) for _ in range(32)]
        del blocks
        cpu.release_memory()
thread = threading.Thread(target=churn)
thread.start()
for fork in range(int(sys.argv[1])):
    time.sleep(0.0003 * (fork % 11))
    pid = os.fork()
    if pid == 0:
        ops.matmul(a, b)  # takes from the pool
        os._exit(0)
    deadline = time.time() + 10
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.time() > deadline:
            os.kill(pid, 9)
            print("hung after", fork, "forks")
            os._exit(1)
        time.sleep(0.002)
stop.set()
thread.join()
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_fork_while_another_thread_uses_the_pool():
    """A process forked while another thread holds the pool's lock (the kernel releases the GIL)
    gets a usable pool: pthread_atfork in csrc/pool.h. 200 forks against a thread that fills and
    empties the pool. A race, so not every run catches the bug: without the handlers 3 of 5 runs had
    a child hang on the inherited lock (after 90-175 forks); with them, none."""
    result = subprocess.run([sys.executable, "-c", FORK_WHILE_POOLING, "200"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr[-2000:]


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
def test_other_instruction_sets(isa, tmp_path):
    """The kernel built for each instruction set this CPU runs (csrc/simd.h; $LSTMKIT_CPU_ISA) passes
    the tile, one-row, thread and float32 tests of this file, in a fresh process and kernel cache."""
    if isa not in cpu_build.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    env = dict(os.environ, LSTMKIT_CPU_ISA=isa, LSTMKIT_CACHE=str(tmp_path))
    selection = ("tiles_and_tails or one_row or threads or float32_gates or float32_gradients_of_saturated or reused "
                 "or skip_unused")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", __file__, "-k", selection],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    passed = re.search(r"^(\d+) passed", result.stdout, re.MULTILINE)
    assert passed and int(passed[1]) >= 100 and "failed" not in result.stdout, result.stdout[-300:]
    assert len(list(tmp_path.glob("lstm_cpu-*.so"))) == 1


@pytest.mark.parametrize("hidden", [16, 19])  # whole vectors; a tail done by the C library
def test_nan_stays_nan(hidden):
    """A NaN in the input gives NaN where the generic backend gives NaN, not a saturated gate."""
    module = lstmkit.LSTM(3, hidden, backend="cpu")
    generic = lstmkit.LSTM(3, hidden, backend="torch")
    generic.load_state_dict(module.state_dict())
    x = torch.randn(6, 4, 3)
    x[2, 1, 0] = float("nan")
    with torch.no_grad():
        out, (h, c) = module(x)
        expected, (h_expected, c_expected) = generic(x)
    for actual, reference in ((out, expected), (h, h_expected), (c, c_expected)):
        assert torch.isnan(reference).any() and torch.equal(torch.isnan(actual), torch.isnan(reference))


def test_instruction_set_choice(monkeypatch):
    """The widest instruction set the CPU has, or the one $LSTMKIT_CPU_ISA names if the CPU has it."""
    from types import SimpleNamespace

    def cpu_with(flags):
        monkeypatch.setattr(cpu_build, "Path", lambda _: SimpleNamespace(read_text=lambda: f"flags : {flags}"))

    monkeypatch.setattr(cpu_build.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("LSTMKIT_CPU_ISA", raising=False)
    for flags, expected in (("sse2", "portable"), ("sse2 avx2 fma", "avx2"), ("avx2 fma avx512f", "avx512")):
        cpu_with(flags)
        assert cpu_build.isa() == expected
    cpu_with("sse2 avx2 fma")
    monkeypatch.setenv("LSTMKIT_CPU_ISA", "portable")
    assert cpu_build.isa() == "portable"
    monkeypatch.setenv("LSTMKIT_CPU_ISA", "avx512")
    with pytest.raises(ValueError, match="LSTMKIT_CPU_ISA=avx512, but this CPU does not have it"):
        cpu_build.isa()


def test_equals_torch_nn_lstm():
    """SPEC 4: the vanilla cell gives torch.nn.LSTM's outputs and gradients."""
    torch.manual_seed(0)
    baseline = torch.nn.LSTM(6, 10, num_layers=2, bidirectional=True, proj_size=4, dtype=torch.float64)
    module = lstmkit.LSTM.from_torch(baseline, backend="cpu")
    x = torch.randn(12, 5, 6, dtype=torch.float64)
    results = []
    for m in (baseline, module):
        xg = x.clone().requires_grad_()
        out, (h, c) = m(xg)
        (out.sum() + h.square().sum() + c.sum()).backward()
        results.append([out, h, c, xg.grad, *(p.grad for p in m.parameters())])
    for expected, actual in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_no_grad_and_other_dtypes_fall_back():
    module = lstmkit.LSTM(3, 5, backend="cpu", dtype=torch.bfloat16)
    out, _ = module(torch.randn(4, 2, 3, dtype=torch.bfloat16))  # generic backend, no error
    assert out.dtype == torch.bfloat16
    module = lstmkit.LSTM(3, 5, backend="cpu", peephole="full")
    with torch.no_grad():
        out, (h, c) = module(torch.randn(4, 2, 3))
    assert out.grad_fn is None and torch.equal(out[-1], h[0])


@pytest.mark.parametrize(
    ("env", "cause"),
    [({"CXX": "no-such-compiler-lstmkit"}, "C++ compiler"), ({"LSTMKIT_CPU_ISA": "avx9"}, "LSTMKIT_CPU_ISA must be one of")],
)
def test_without_kernel_warns_once_and_falls_back(tmp_path, env, cause):
    """No compiler, or an unknown $LSTMKIT_CPU_ISA: one RuntimeWarning naming the cause, then the
    generic backend's results."""
    script = (
        "import sys, warnings, torch, lstmkit\n"
        "warnings.simplefilter('always')\n"
        "m = lstmkit.LSTM(3, 4, peephole='diagonal')\n"
        "generic = lstmkit.LSTM(3, 4, peephole='diagonal', backend='torch')\n"
        "generic.load_state_dict(m.state_dict())\n"
        "x = torch.randn(5, 2, 3)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    out, _ = m(x)\n"
        "    m(x)\n"
        "messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]\n"
        "assert len(messages) == 1 and sys.argv[1] in messages[0], messages\n"
        "assert torch.equal(out, generic(x)[0])\n"
        "print('fallback ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, cause], env=dict(os.environ, LSTMKIT_CACHE=str(tmp_path), **env),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "fallback ok" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize(
    "options",
    [{}, {"peephole": "full", "proj_size": 2}, {"peephole": "diagonal", "coupled_gates": True, "bidirectional": True}],
)
def test_double_backward_against_finite_differences(options):
    """Gradients taken with create_graph=True (gradient penalties, Hessian-vector products) can be
    differentiated again: second derivatives against finite differences, inputs and weights."""
    torch.manual_seed(0)
    module = lstmkit.LSTM(3, 4, dtype=torch.float64, backend="cpu", **options)
    names = [name for name, _ in module.named_parameters()]
    lengths = torch.tensor([4, 2])

    def run(x, *weights):
        out, (h, c) = torch.func.functional_call(module, dict(zip(names, weights)), (x,), {"lengths": lengths})
        return out, h, c

    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert ran_the_kernel(run(x, *module.parameters())[0])
    inputs = (x, *module.parameters())
    outputs = run(*inputs)
    grad_outputs = [torch.randn_like(o) for o in outputs]
    kernel = torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=True)
    differentiable = torch.autograd.grad(outputs, inputs, grad_outputs, create_graph=True)
    for expected, actual in zip(kernel, differentiable):  # the same first derivatives
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradgradcheck(run, inputs)  # and their derivatives


@pytest.mark.parametrize("inner", [torch.sum, lambda out: out.square().sum()])
def test_gradient_penalty_equals_torch_nn_lstm(inner):
    """The weights' gradients of a loss with a penalty on dL/dx, as torch.nn.LSTM computes them.
    (With the kernel's backward marked once-differentiable, the sum's penalty lost its dependence on
    the weights without an error: |dL/dR| 1.92 instead of 3.11.)"""
    torch.manual_seed(0)
    baseline = torch.nn.LSTM(3, 5, num_layers=2, dtype=torch.float64)
    module = lstmkit.LSTM.from_torch(baseline, backend="cpu")
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    grads = []
    for m in (baseline, module):
        xg = x.clone().requires_grad_()
        out, _ = m(xg)
        (d_x,) = torch.autograd.grad(inner(out), xg, create_graph=True)
        (out.sum() + d_x.square().sum()).backward()
        grads.append([p.grad for p in m.parameters()])
    for expected, actual in zip(*grads):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_double_backward_of_an_empty_sequence():
    """T = 0: the output is empty and outside the graph; create_graph still reaches h0 and c0."""
    module = lstmkit.LSTM(3, 4, dtype=torch.float64, backend="cpu")
    x = torch.randn(0, 2, 3, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out, (h, c) = module(x, (h0, c0))
    d_h0, d_c0 = torch.autograd.grad(h.sum() + c.square().sum(), [h0, c0], create_graph=True)
    assert torch.equal(d_h0, torch.ones_like(h0)) and torch.equal(d_c0, 2 * c0)
    (d_c0.sum()).backward()
    assert torch.equal(c0.grad, torch.full_like(c0, 2.0))
