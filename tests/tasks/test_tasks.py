"""lstmkit.tasks: the data each task generates, its metrics, and the charlm file checks."""

import math

import pytest
import torch

from lstmkit import config as cfg
from lstmkit import tasks
from lstmkit.run import build_model
from lstmkit.tasks import adding, charlm, memory


def _config(task_class, **settings):
    return cfg.resolve(task_class.defaults, {}, settings)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(tasks.TaskError, match="memory, adding, charlm"):
        tasks.get("sorting")


def test_memory_batches_follow_the_rule_and_depend_on_seed_step_rank():
    task = memory.MemoryTask(_config(memory.MemoryTask, seed=3))
    x, y = task.train_batch(7, 5)
    assert x.shape == (20, 5, 3) and y.shape == (20, 5, 1)
    for b in range(5):  # the rule, step by step in plain Python
        mem = 0.0
        for t in range(20):
            x1, x2, x3 = x[t, b].tolist()
            mem = mem + x1 if x2 == 1 else (0.0 if x2 == -1 else mem)
            assert y[t, b, 0] == (mem if x3 == 1 else 0.0)
    assert torch.equal(task.train_batch(7, 5)[0], x)
    assert not torch.equal(task.train_batch(8, 5)[0], x)
    assert not torch.equal(memory.MemoryTask(task.config, rank=1).train_batch(7, 5)[0], x)


class _Oracle(torch.nn.Module):
    """Outputs the task's answer (scaled as the head's target), plus an offset."""

    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def forward(self, x, state=None):
        return memory.targets(x)[1][..., None] / memory.MemoryTask.SCALE + self.offset, state


def test_memory_accuracy_counts_rounded_outputs_where_x3_is_one():
    task = memory.MemoryTask(_config(memory.MemoryTask))
    assert task.evaluate(_Oracle(0.0), "val", torch.device("cpu")) == {"accuracy": 1.0, "mse": 0.0}
    # an offset of 0.6 after scaling rounds every shown output to the wrong integer
    wrong = task.evaluate(_Oracle(0.06), "val", torch.device("cpu"))
    assert wrong["accuracy"] == 0.0 and wrong["mse"] == pytest.approx(0.36, rel=1e-5)


def test_adding_problem_matches_hochreiter_schmidhuber():
    x, y = adding.sample(400, 100, torch.Generator().manual_seed(0))
    assert x.shape == (100, 400, 2) and y.shape == (400, 1)
    values, markers = x[..., 0], x[..., 1]
    assert values.min() >= -1 and values.max() <= 1
    for b in range(400):
        marked = markers[:, b].nonzero().flatten().tolist()
        assert len(marked) == 2 and marked[0] < 10 <= marked[1] < 50
        assert y[b, 0].item() == pytest.approx(0.5 + (values[marked[0], b] + values[marked[1], b]).item() / 4)


def test_adding_metrics_and_short_sequences():
    task = adding.AddingTask(_config(adding.AddingTask, seq_len=20))

    class Constant(torch.nn.Module):
        def forward(self, x, state=None):
            return torch.full((x.shape[0], x.shape[1], 1), 0.5), state

    (x, y), = task.eval_batches("val")
    metrics = task.evaluate(Constant(), "val", torch.device("cpu"))
    assert metrics["mse"] == pytest.approx(float(((y - 0.5) ** 2).mean()), rel=1e-6)
    assert metrics["solved"] == pytest.approx(float(((y - 0.5).abs() < 0.04).float().mean()))
    # the variance of (X1 + X2) / 4 with X uniform in [-1, 1] is 1/24
    assert metrics["mse"] == pytest.approx(1 / 24, rel=0.1)
    with pytest.raises(tasks.TaskError, match="seq-len"):
        adding.AddingTask(_config(adding.AddingTask, seq_len=3))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("".join(f"line {i}: the quick brown fox, é ü {i * i}\n" for i in range(400)), encoding="utf-8")
    return path


def test_charlm_splits_streams_and_shards(text_file):
    config = _config(charlm.CharLMTask, data=str(text_file), seq_len=8, batch_size=3)
    text = text_file.read_text(encoding="utf-8")
    task = charlm.CharLMTask(config, rank=1, world_size=2)
    assert task.vocab == "".join(sorted(set(text))) and task.vocab_size == len(task.vocab)
    decode = lambda ids: "".join(task.vocab[i] for i in ids.tolist())  # noqa: E731
    splits = {name: decode(task._splits[name]) for name in ("train", "val", "test")}
    assert splits["train"] + splits["val"] + splits["test"] == text
    assert len(splits["val"]) == pytest.approx(0.05 * len(text), abs=2)
    x0, y0 = task.train_batch(0, 3)
    x1, _ = task.train_batch(1, 3)
    assert x0.shape == (8, 3)
    assert torch.equal(y0[:-1], x0[1:]) and torch.equal(y0[-1], x1[0])  # targets are the next characters
    # stream j of rank 1 is stream 3 + j of the train text cut into 6 streams
    length = len(splits["train"]) // 6
    for j in range(3):
        start = (3 + j) * length
        assert decode(x0[:, j]) == splits["train"][start : start + 8]
    assert task.starts_sequence(0) and not task.starts_sequence(1)
    assert task.starts_sequence(task._per_epoch)


def test_charlm_bpc_of_a_uniform_model_is_log2_vocab(text_file):
    task = charlm.CharLMTask(_config(charlm.CharLMTask, data=str(text_file), seq_len=8, batch_size=3))

    class Uniform(torch.nn.Module):
        def forward(self, x, state=None):
            return torch.zeros(*x.shape, task.vocab_size), state

    assert task.evaluate(Uniform(), "test", torch.device("cpu"))["bpc"] == pytest.approx(math.log2(task.vocab_size))


def test_charlm_generate_streams_known_characters(text_file):
    config = _config(charlm.CharLMTask, data=str(text_file), seq_len=8, batch_size=3, hidden_size=8, embed_dim=4)
    task = charlm.CharLMTask(config)
    model = build_model(task, config).eval()
    out = "".join(task.generate(model, "line", 30, 0.8, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert len(out) == 30 and set(out) <= set(task.vocab)
    with pytest.raises(tasks.TaskError, match="vocabulary"):
        list(task.generate(model, "xyz\u2603", 3, 1.0, torch.Generator(), torch.device("cpu")))


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50, "not a UTF-8 text file"),
    (b"caf\xe9 " * 500, "not a UTF-8 text file"),
    (b"too short", "too short"),
])
def test_charlm_bad_data_files(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(tasks.TaskError, match=message):
        charlm.CharLMTask(_config(charlm.CharLMTask, data=str(path)))


def test_charlm_refuses_a_different_file(text_file):
    task = charlm.CharLMTask(_config(charlm.CharLMTask, data=str(text_file), seq_len=8, batch_size=3))
    text_file.write_text(text_file.read_text(encoding="utf-8") + "more", encoding="utf-8")
    later = charlm.CharLMTask(task.config, info=task.info())
    with pytest.raises(tasks.TaskError, match="not the file this run was trained on"):
        later.train_batch(0, 3)
