"""lstmkit.checkpoint: exact round trips without pickle, atomic writes, damaged files refused."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("safetensors")

from lstmkit import checkpoint  # noqa: E402
from lstmkit.checkpoint import CheckpointError  # noqa: E402


def _trained_adam(steps: int = 3):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer


def _save(path, model, optimizer, step=3):
    tensors, rest = checkpoint.flatten_optimizer(optimizer.state_dict())
    tensors |= {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors["rng.torch.0"] = torch.get_rng_state()
    checkpoint.save(path, tensors, {"step": step, "optimizer": rest})


def test_round_trip_continues_training_bitwise(tmp_path):
    model, optimizer = _trained_adam()
    path = tmp_path / "c.safetensors"
    _save(path, model, optimizer)
    saved_rng = torch.get_rng_state()
    tensors, meta = checkpoint.load(path)
    assert meta["step"] == 3
    # a fresh model and optimizer restored from the file take the same next step
    fresh, fresh_opt = _trained_adam(steps=0)
    fresh.load_state_dict(checkpoint.prefixed(tensors, "model"))
    fresh_opt.load_state_dict(checkpoint.unflatten_optimizer(tensors, meta["optimizer"]))
    assert torch.equal(tensors["rng.torch.0"], saved_rng)
    x = torch.randn(5, 4)
    for m, opt in ((model, optimizer), (fresh, fresh_opt)):
        opt.zero_grad()
        m(x).pow(2).sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_file_is_plain_safetensors_without_pickle(tmp_path):
    from safetensors.torch import load_file

    model, optimizer = _trained_adam()
    path = tmp_path / "c.safetensors"
    _save(path, model, optimizer)
    weights = checkpoint.prefixed(load_file(path), "model")
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_damaged_checkpoint_refused(tmp_path, damage):
    model, optimizer = _trained_adam()
    path = tmp_path / "c.safetensors"
    _save(path, model, optimizer)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-3] ^= 0x40  # a bit in the last tensor's data
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a checkpoint at all" * 10)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checkpoint|corrupted"):
        checkpoint.load(path)


def test_foreign_safetensors_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"lstmkit": json.dumps({"format": "other/9"})})
    with pytest.raises(CheckpointError, match="not an lstmkit checkpoint"):
        checkpoint.load(path)
    save_file({"weight": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not an lstmkit checkpoint"):
        checkpoint.load(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.safetensors")


def test_kill_during_write_keeps_previous_checkpoint(tmp_path):
    """A process killed (SIGKILL) in the middle of writing a checkpoint leaves the previous
    complete checkpoint in place and loadable."""
    path = tmp_path / "last.safetensors"
    script = textwrap.dedent(f"""
        import os, sys, time, torch
        from lstmkit import checkpoint
        path = {str(path)!r}
        checkpoint.save(path, {{"model.w": torch.full((1000,), 1.0)}}, {{"step": 1}})
        real_fsync = os.fsync
        def stalled_fsync(fd):  # the new data is written but not yet renamed: stop here
            print("writing", flush=True)
            time.sleep(60)
        os.fsync = stalled_fsync
        checkpoint.save(path, {{"model.w": torch.full((1000,), 2.0)}}, {{"step": 2}})
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "writing"
        temps = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
        assert len(temps) == 1 and (tmp_path / temps[0]).stat().st_size > 4000  # the new data is on disk
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    tensors, meta = checkpoint.load(path)
    assert meta["step"] == 1 and torch.equal(tensors["model.w"], torch.full((1000,), 1.0))
    checkpoint.save(path, {"model.w": torch.zeros(2)}, {"step": 3})  # the next save works over it
    assert checkpoint.load(path)[1]["step"] == 3
