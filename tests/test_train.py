"""lstmkit train / eval / generate, end to end at tiny sizes: the run folder, resume, signals,
torchrun, and bad input (one line, non-zero exit, nothing overwritten)."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("safetensors")

from lstmkit import checkpoint  # noqa: E402
from lstmkit.cli import main  # noqa: E402
from lstmkit.run import RunDir, build_model  # noqa: E402
from lstmkit.tasks.memory import MemoryTask  # noqa: E402

TINY = ["--hidden-size", "8", "--seq-len", "8", "--batch-size", "8", "--no-progress"]
CHARLM = ["--hidden-size", "16", "--num-layers", "2", "--dropout", "0.2", "--embed-dim", "8",
          "--seq-len", "16", "--batch-size", "4", "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()  # --threads sets them for the process
    yield
    torch.set_num_threads(threads)


def cli(capsys, *args):
    """Run ``lstmkit ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def lstmkit_process(*args, **popen):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "lstmkit", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def records(run_dir, split):
    return [r for r in RunDir(run_dir).metrics() if r["split"] == split]


def weights(run_dir, which="last"):
    return checkpoint.prefixed(checkpoint.load(Path(run_dir) / "checkpoints" / f"{which}.safetensors")[0], "model")


def snapshot(folder):
    """sha256 of every file under ``folder``: to show that nothing was overwritten."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    lines = [f"{name}: {verb} the {thing}.\n" for name in ("ROMEO", "JULIET", "NURSE") for verb in
             ("see", "hold", "want", "love") for thing in ("moon", "sword", "rose", "night", "letter")]
    rng = random.Random(0)
    path.write_text("".join(rng.choice(lines) for _ in range(1500)), encoding="utf-8")
    return path


def test_train_memory_writes_the_run_folder_and_eval_reads_it(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", "memory", *TINY, "--steps", 30, "--eval-every", 10, "--run-dir", run)
    assert code == 0, err
    assert "done: 30 steps" in err and "val accuracy=" in out
    saved = json.loads((run / "config.json").read_text())
    assert saved["task"] == "memory" and saved["config"]["hidden_size"] == 8 and saved["config"]["lr"] == 0.01
    val = records(run, "val")
    assert [r["step"] for r in val] == [10, 20, 30] and all({"accuracy", "mse"} <= r.keys() for r in val)
    assert [r["step"] for r in records(run, "train")] == [10, 20, 30]
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = max(val, key=lambda r: r["accuracy"])
    assert checkpoint.load(run / "checkpoints" / "best.safetensors")[1]["step"] == best["step"]
    assert checkpoint.load(run / "checkpoints" / "last.safetensors")[1]["step"] == 30

    code, out, err = cli(capsys, "eval", run, "--json", "--checkpoint", "last")
    assert code == 0, err
    result = json.loads(out)
    task = MemoryTask(saved["config"])
    model = build_model(task, saved["config"])
    model.load_state_dict(weights(run))
    assert result["step"] == 30 and result["split"] == "test"
    assert result == {**result, **task.evaluate(model.eval(), "test", torch.device("cpu"))}
    code, out, _ = cli(capsys, "eval", run)
    assert code == 0 and out.startswith("memory test: accuracy")


def test_train_adding_and_a_toml_config(tmp_path, capsys):
    config = tmp_path / "adding.toml"
    config.write_text('task = "adding"\nhidden-size = 6\nseq_len = 12\npeephole = "diagonal"\n'
                      'activations = ["sigmoid", ["leaky_relu", 0.1], "tanh"]\nsteps = 9\nbatch_size = 4\n')
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--config", config, "--steps", 6, "--eval-every", 3, "--run-dir", run,
                       "--no-progress", "--schedule", "cosine", "--warmup", 2)
    assert code == 0, err
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["hidden_size"] == 6 and saved["peephole"] == "diagonal" and saved["steps"] == 6  # the flag wins
    assert saved["activations"] == "sigmoid,leaky_relu:0.1,tanh"
    assert "lstm.weight_peep_l0" in weights(run)
    assert {"mse", "solved"} <= records(run, "val")[-1].keys()


def test_charlm_train_eval_generate(tmp_path, capsys, text_file):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "charlm", "--data", text_file, *CHARLM, "--steps", 12, "--eval-every", 6,
                       "--run-dir", run)
    assert code == 0, err
    assert all(r["bpc"] > 0 for r in records(run, "val"))
    code, out, err = cli(capsys, "eval", run, "--json")
    assert code == 0, err
    assert json.loads(out)["bpc"] > 0
    code, out, err = cli(capsys, "generate", run, "--prime", "ROMEO:", "--length", 40, "--temperature", 0.7)
    assert code == 0, err
    assert out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 40 + 1
    again = cli(capsys, "generate", run, "--prime", "ROMEO:", "--length", 40, "--temperature", 0.7)[1]
    assert again == out  # seeded sampling
    text_file.unlink()  # generation needs only the run folder, evaluation needs the text
    assert cli(capsys, "generate", run, "--length", 5)[0] == 0
    code, _, err = cli(capsys, "eval", run)
    assert code == 2 and "no such file" in err


def test_resume_with_another_text_is_refused_before_anything_is_written(tmp_path, capsys, text_file):
    run = tmp_path / "run"
    assert cli(capsys, "train", "charlm", "--data", text_file, *CHARLM, "--steps", 2, "--eval-every", 2,
               "--run-dir", run)[0] == 0
    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text(encoding="utf-8")[::-1], encoding="utf-8")
    before = snapshot(run)
    code, _, err = cli(capsys, "train", "--resume", run, "--data", other, "--steps", 4)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not the file this run was trained on" in err
    assert snapshot(run) == before


def _wait_for(predicate, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_resume_after_sigterm_is_bitwise_exact(tmp_path, capsys, text_file):
    """A run stopped by SIGTERM at a random step and resumed ends with the weights of an
    uninterrupted run (dropout and the carried TBPTT state included)."""
    args = ["train", "charlm", "--data", text_file, *CHARLM, "--steps", 400, "--eval-every", 40]
    full = tmp_path / "full"
    assert cli(capsys, *args, "--run-dir", full)[0] == 0

    stopped = tmp_path / "stopped"
    process = lstmkit_process(*args, "--run-dir", stopped)
    after = 40 * random.randint(1, 5)  # then a random moment within the next steps
    _wait_for(lambda: (stopped / "metrics.jsonl").exists() and records(stopped, "val")[-1:] != []
              and records(stopped, "val")[-1]["step"] >= after, process)
    time.sleep(random.uniform(0, 0.1))
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    step = checkpoint.load(stopped / "checkpoints" / "last.safetensors")[1]["step"]
    assert after <= step < 400

    code, _, err = cli(capsys, "train", "--resume", stopped)
    assert code == 0, err
    a, b = weights(full), weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in records(stopped, "val")] == sorted({*range(40, 401, 40), step})


def test_kill_9_leaves_a_loadable_checkpoint_and_the_run_resumes(tmp_path, capsys):
    """SIGKILL at a random moment of a run that checkpoints every step (so often mid-write)."""
    run = tmp_path / "run"
    process = lstmkit_process("train", "memory", *TINY, "--steps", 100000, "--eval-every", 1, "--run-dir", run)
    _wait_for(lambda: len(records(run, "val")) >= 5 if (run / "metrics.jsonl").exists() else False, process)
    time.sleep(random.Random().uniform(0, 1))
    process.kill()
    process.communicate()
    tensors, meta = checkpoint.load(run / "checkpoints" / "last.safetensors")
    assert meta["step"] >= 5
    code, _, err = cli(capsys, "train", "--resume", run, "--steps", meta["step"] + 3)
    assert code == 0, err
    assert checkpoint.load(run / "checkpoints" / "last.safetensors")[1]["step"] == meta["step"] + 3
    assert not list((run / "checkpoints").glob(".*.tmp"))  # what a killed write left is cleaned up


def test_torchrun_two_processes_keep_identical_weights(tmp_path, text_file):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "lstmkit", "train", "charlm", "--data", text_file, *CHARLM, "--steps", 40, "--eval-every", 10,
               "--run-dir", run]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, GLOO_SOCKET_IFNAME="lo"))
    assert result.returncode == 0, result.stderr[-3000:]
    tensors, meta = checkpoint.load(run / "checkpoints" / "last.safetensors")
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    # every process's weights, hashed in that process at the last step, equal the saved ones
    saved = checkpoint.digest({k: v for k, v in tensors.items() if k.startswith("model.")})
    assert meta["replica_sha256"] == [saved, saved]
    assert {"rng.torch.0", "rng.torch.1", "state.h.0", "state.h.1"} <= tensors.keys()
    train = records(run, "train")
    assert [r["step"] for r in train] == [10, 20, 30, 40] and train[-1]["loss"] < train[0]["loss"]


@pytest.fixture(scope="module")
def _finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    threads = torch.get_num_threads()
    assert main(["train", "memory", *TINY, "--steps", "4", "--eval-every", "2", "--run-dir", str(run)]) == 0
    torch.set_num_threads(threads)
    return run


@pytest.fixture
def finished_run(_finished_run, tmp_path):
    """A copy of a finished tiny run, for one test to damage."""
    return Path(shutil.copytree(_finished_run, tmp_path / "finished"))


def _bad(capsys, tmp_path, name, finished_run):
    """The command line of each bad-input case, and what its error line must say."""
    last = finished_run / "checkpoints" / "last.safetensors"
    data = tmp_path / "data.txt"
    cases = {
        "unknown task": (["train", "sorting"], "unknown task 'sorting'"),
        "unknown flag": (["train", "memory", "--hidden", "3"], "unrecognized arguments"),
        "bad flag value": (["train", "memory", "--steps", "many"], "invalid int value"),
        "missing data": (["train", "charlm", "--data", tmp_path / "nope.txt"], "no such file"),
        "empty data": (["train", "charlm", "--data", data], "empty"),
        "binary data": (["train", "charlm", "--data", data], "not a UTF-8 text file"),
        "short data": (["train", "charlm", "--data", data], "too short"),
        "bad option": (["train", "memory", "--proj-size", "9", "--hidden-size", "8"], "proj_size"),
        "bad config": (["train", "memory", "--config", data], "unknown setting 'hiden_size'"),
        "run dir exists": (["train", "memory", "--run-dir", finished_run], "exists and is not empty"),
        "run dir unwritable": (["train", "memory", "--run-dir", "/proc/lstmkit-run"], "cannot write the run folder"),
        "corrupted checkpoint": (["train", "--resume", finished_run], "corrupted"),
        "foreign checkpoint": (["train", "--resume", finished_run], "not an lstmkit checkpoint"),
        "other run's checkpoint": (["train", "--resume", finished_run], "belongs to another run"),
        "incompatible resume": (["train", "--resume", finished_run, "--hidden-size", "16"], "incompatible settings"),
        "other task resume": (["train", "adding", "--resume", finished_run], "trains 'memory'"),
        "not a run": (["train", "--resume", tmp_path], "not a run folder"),
        "eval corrupted": (["eval", finished_run, "--checkpoint", "last"], "corrupted"),
        "generate memory": (["generate", finished_run], "needs a charlm run"),
    }
    content = {"empty data": b"", "binary data": bytes(range(256)) * 40, "short data": b"abc " * 100,
               "bad config": b"hiden_size = 3\n"}
    if name in content:
        data.write_bytes(content[name])
    if name in ("corrupted checkpoint", "eval corrupted"):
        raw = bytearray(last.read_bytes())
        raw[len(raw) // 2] ^= 1
        last.write_bytes(bytes(raw))
    elif name == "foreign checkpoint":
        from safetensors.torch import save_file

        save_file({"weight": torch.zeros(2)}, str(last))
    elif name == "other run's checkpoint":
        other = tmp_path / "other"
        assert main(["train", "adding", *TINY, "--steps", "2", "--eval-every", "2", "--run-dir", str(other)]) == 0
        last.write_bytes((other / "checkpoints" / "last.safetensors").read_bytes())
    capsys.readouterr()
    return cases[name]


@pytest.mark.parametrize("name", [
    "unknown task", "unknown flag", "bad flag value", "missing data", "empty data", "binary data", "short data",
    "bad option", "bad config", "run dir exists", "run dir unwritable", "corrupted checkpoint", "foreign checkpoint",
    "other run's checkpoint", "incompatible resume", "other task resume", "not a run", "eval corrupted",
    "generate memory",
])
def test_bad_input_is_one_line_and_overwrites_nothing(tmp_path, capsys, monkeypatch, finished_run, name):
    monkeypatch.chdir(tmp_path)  # a default run folder would appear here
    args, message = _bad(capsys, tmp_path, name, finished_run)
    before = snapshot(finished_run)
    code, out, err = cli(capsys, *args)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    assert snapshot(finished_run) == before
    assert not (tmp_path / "runs").exists()
