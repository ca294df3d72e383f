"""``lstmkit demo`` against the lecture's table (SPEC section 3)."""

import json
import subprocess
import sys

import pytest
import torch

from lstmkit import demo
from lstmkit.tasks import memory


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One full run of the command as a user runs it: JSON on stdout and a PNG."""
    png = tmp_path_factory.mktemp("demo") / "gates.png"
    done = subprocess.run([sys.executable, "-m", "lstmkit", "demo", "--json", "--plot", str(png)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout), png


@pytest.mark.parametrize("sequence", list(memory.SLIDE))
def test_handwired_equals_the_slide(demo_run, sequence):
    rows, slide = demo_run[0]["handwired"][sequence], memory.SLIDE[sequence]
    assert rows["x1"] == slide["x1"] and rows["x2"] == slide["x2"] and rows["x3"] == slide["x3"]
    for ours, theirs in (("memory_after", "memory"), ("y", "y")):
        assert [round(v) for v in rows[ours]] == slide[theirs]
        assert max(abs(a - b) for a, b in zip(rows[ours], slide[theirs])) < 1e-3
    assert [round(v) for v in rows["memory_before"]] == [0] + slide["memory"][:-1]
    # The gates do what the lecture says: input open iff x2 = 1, forget closed iff x2 = -1, output open iff x3 = 1.
    assert [round(v) for v in rows["gate_i"]] == [int(v == 1) for v in slide["x2"]]
    assert [round(v) for v in rows["gate_f"]] == [int(v != -1) for v in slide["x2"]]
    assert [round(v) for v in rows["gate_o"]] == slide["x3"]


@pytest.mark.parametrize("sequence", list(memory.SLIDE))
def test_learned_reproduces_the_slide(demo_run, sequence):
    assert [round(v) for v in demo_run[0]["learned"][sequence]["y"]] == memory.SLIDE[sequence]["y"]


def test_learned_generalises_to_20x_longer_sequences(demo_run):
    long = demo_run[0]["learned"]["long_sequences"]
    assert long["length"] == 20 * demo.TRAIN["length"] and long["sequences"] == 1000
    assert long["output_steps"] > 100_000
    assert long["within_0.5"] >= 0.99


def test_plot_is_a_png(demo_run):
    png = demo_run[1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_learning_is_deterministic():
    a, b = demo.learn(seed=3, steps=20), demo.learn(seed=3, steps=20)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    c = demo.learn(seed=4, steps=20)
    assert not torch.equal(a.weight_ih_l0, c.weight_ih_l0)


@pytest.mark.parametrize("argv, message", [(["--steps", "0"], "--steps must be >= 1"),
                                           (["--plot", "out.jpg"], "--plot must name a .png file"),
                                           (["--plot", "/nonexistent/dir/x.png"], "its folder does not exist")])
def test_bad_arguments_are_one_line(argv, message):
    done = subprocess.run([sys.executable, "-m", "lstmkit", "demo", *argv], capture_output=True, text=True)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
