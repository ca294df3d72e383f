"""The kernel backends as the modules call them (backends.select, backends.kernel_backend): under
torch.compile and under torch.func transforms, against torch.nn.LSTM and the kernel's own backward."""

import subprocess
import sys
import warnings

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

import lstmkit
from tests.helpers import TOLERANCE, assert_close, ran_the_kernel

BACKENDS = ["cpu", "triton"]  # Triton: under its interpreter on a machine without CUDA (tests/conftest.py)


def per_sample_grads(module, x):
    """d(sum of squared outputs)/d(weights) for each sequence of x (T, B, I) alone: vmap over grad."""
    params = {name: p.detach() for name, p in module.named_parameters()}

    def loss(params, sequence):  # sequence (T, I)
        out, _ = functional_call(module, params, (sequence.unsqueeze(1),))
        return out.square().sum()

    return vmap(grad(loss), in_dims=(None, 1))(params, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_transforms_equal_torch_nn_lstm(backend):
    """vmap(grad) (per-sample gradients) and jacrev, as they run on torch.nn.LSTM: the kernels cannot
    be transformed, so the generic backend runs under them. (Float32, one layer: in float64, or with
    two layers, nn.LSTM itself fails under vmap.)"""
    baseline = torch.nn.LSTM(3, 4)
    module = lstmkit.LSTM.from_torch(baseline, backend=backend)
    x = torch.randn(5, 3, 3)
    expected, actual = per_sample_grads(baseline, x), per_sample_grads(module, x)
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].shape[0] == 3  # one gradient per sequence
        assert_close(actual[name], expected[name], TOLERANCE[torch.float32]["grad"], name)
    jacobians = [jacrev(lambda x, m=m: m(x)[0])(x) for m in (baseline, module)]  # (T, B, H, T, B, I)
    assert_close(jacobians[1], jacobians[0], TOLERANCE[torch.float32]["grad"], "jacobian")


def test_torch_func_grad_of_a_variant_equals_autograd():
    """A variant nn.LSTM lacks: torch.func.grad gives what the fused kernel's own backward gives."""
    module = lstmkit.LSTM(3, 4, peephole="full", proj_size=2, bidirectional=True, dtype=torch.float64,
                          backend="cpu")
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 3])
    params = {name: p.detach() for name, p in module.named_parameters()}

    def loss(params):
        out, (h, c) = functional_call(module, params, (x,), {"lengths": lengths})
        return out.square().sum() + h.sum() + c.square().sum()

    transformed = grad(loss)(params)
    loss(dict(module.named_parameters())).backward()  # the kernel's backward, outside any transform
    for name, p in module.named_parameters():
        torch.testing.assert_close(transformed[name], p.grad, rtol=1e-10, atol=1e-12)


def test_torch_compile_runs_the_kernel_between_graphs():
    """A model that holds an lstmkit.LSTM compiles: its other layers into graphs, once, and the LSTM
    runs the fused kernel as it is between them, with the uncompiled outputs and gradients."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = torch.nn.Linear(3, 8), torch.nn.Linear(6, 2)
            self.lstm = lstmkit.LSTM(8, 6, num_layers=2, backend="cpu")

        def forward(self, x):
            y, (h, c) = self.lstm(torch.relu(self.inp(x)))
            return self.out(y), c

    graphs = []

    def count_graphs(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    model = Model()
    compiled = torch.compile(model, backend=count_graphs)
    x = torch.randn(7, 2, 3)
    results, counts = [], []
    for run in (model, compiled, compiled, compiled):
        model.zero_grad()
        out, c = run(x)
        (out.square().sum() + c.sum()).backward()
        results.append([out, c, *(p.grad for p in model.parameters())])
        counts.append(len(graphs))
        assert ran_the_kernel(c)
    assert counts[1] >= 2 and counts[1] == counts[3]  # the linear layers compiled, then no recompiles
    linears = [n for g in graphs for n in g.graph.nodes if "linear" in str(n.target)]
    assert len(linears) == 2
    for compiled_results in results[1:]:
        for expected, actual in zip(results[0], compiled_results):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)



def test_importing_lstmkit_leaves_dynamo_unimported():
    """torch._dynamo takes about a second to import: lstmkit needs it only once torch.compile runs."""
    code = "import sys, lstmkit; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


# torch.compiler.is_exporting, which tells export from compile, came with torch 2.7
OLD_TORCH = tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 7)


@pytest.mark.parametrize(
    "backend", [pytest.param("cpu", marks=pytest.mark.skipif(OLD_TORCH, reason="torch < 2.7")), "torch"]
)
@pytest.mark.parametrize("strict", [False, True])
def test_torch_export_records_the_generic_steps(strict, backend):
    """torch.export records PyTorch operators (the generic backend's steps, unrolled for the
    example's length), and the exported program computes what the module does."""
    module = lstmkit.LSTM(4, 5, bidirectional=True, peephole="diagonal", backend=backend)
    x = torch.randn(6, 2, 4)
    program = torch.export.export(module, (x,), strict=strict)
    assert not any("lstmkit" in str(node.target) for node in program.graph.nodes)
    x = torch.randn(6, 2, 4)
    (out, (h, c)), (out_e, (h_e, c_e)) = module(x), program.module()(x)
    for expected, actual in ((out, out_e), (h, h_e), (c, c_e)):
        assert_close(actual, expected, TOLERANCE[torch.float32]["forward"])


def test_batched_backward_forward_ad_and_tracing_equal_torch_nn_lstm():
    """The rest of PyTorch's machinery that needs operators rather than a kernel: a batched backward
    (is_grads_batched, jacobian(vectorize=True)), forward-mode AD with dual tensors, and
    torch.jit.trace (traced, saved and loaded)."""
    import io

    import torch.autograd.forward_ad as fwAD

    baseline = torch.nn.LSTM(3, 4, dtype=torch.float64)
    module = lstmkit.LSTM.from_torch(baseline, backend="cpu")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    vectors = torch.randn(6, 5, 2, 4, dtype=torch.float64)
    tangent = torch.randn_like(x)

    def batched_vjp(m):
        xg = x.clone().requires_grad_()
        return torch.autograd.grad(m(xg)[0], xg, vectors, is_grads_batched=True)[0]

    def jacobian(m):
        return torch.autograd.functional.jacobian(lambda x: m(x)[0], x, vectorize=True)

    def jvp(m):
        with fwAD.dual_level():
            return fwAD.unpack_dual(m(fwAD.make_dual(x, tangent))[0]).tangent

    def traced(m):
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation, the tracer's shape checks
            torch.jit.save(torch.jit.trace(m, (x,), check_trace=False), buffer)
        buffer.seek(0)
        return torch.jit.load(buffer)(x)[0]

    for transform in (batched_vjp, jacobian, jvp, traced):
        torch.testing.assert_close(transform(module), transform(baseline), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_per_sample_gradients_with_lengths_compiled(backend):
    """vmap(grad) over sequences that carry their own length, also under torch.compile, equals
    autograd on each sequence alone."""
    module = lstmkit.LSTM(3, 4, dtype=torch.float64, backend=backend)
    params = {name: p.detach() for name, p in module.named_parameters()}
    x, lengths = torch.randn(6, 3, 3, dtype=torch.float64), torch.tensor([6, 2, 4])

    def loss(params, sequence, length):  # sequence (T, I), length ()
        out, (h, c) = functional_call(module, params, (sequence.unsqueeze(1),), {"lengths": length.reshape(1)})
        return out.square().sum() + h.sum()

    per_sample = vmap(grad(loss), in_dims=(None, 1, 0))
    torch._dynamo.reset()
    results = [per_sample(params, x, lengths), torch.compile(per_sample, backend="eager")(params, x, lengths)]
    for b in range(3):
        expected = grad(loss)(params, x[:, b], lengths[b])
        for result in results:
            for name in params:
                torch.testing.assert_close(result[name][b], expected[name], rtol=1e-10, atol=1e-12)


def test_lengths_are_checked_under_torch_func_grad():
    """Only vmap hides the lengths' values; under grad alone a bad length is still refused."""
    module = lstmkit.LSTM(3, 4)
    params = {name: p.detach() for name, p in module.named_parameters()}

    def loss(params):
        return functional_call(module, params, (torch.randn(5, 2, 3),), {"lengths": torch.tensor([5, -1])})[0].sum()

    with pytest.raises(ValueError, match="lengths must be >= 0, got -1"):
        grad(loss)(params)
