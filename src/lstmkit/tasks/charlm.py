"""Character-level language model on any UTF-8 text file (``lstmkit train charlm --data FILE``).

The text is split by characters into 90% train, 5% validation and 5% test. The vocabulary is
every character of the file. Training is truncated backpropagation through time: the train text
is cut into ``batch_size * world_size`` parallel streams (process r reads streams
r*B .. (r+1)*B - 1), each step reads the next ``seq_len`` characters of every stream, and the
LSTM state (h, c) is carried from one step to the next (reset when the streams wrap around).

Metric: ``bpc``, bits per character = mean cross-entropy in nats / ln 2, over the whole split.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import Task, TaskError

SPLITS = {"train": (0.0, 0.9), "val": (0.9, 0.95), "test": (0.95, 1.0)}


def read_text(path: str | None) -> tuple[str, str]:
    """The text of ``path`` and its sha256; a :class:`TaskError` for a missing, empty or binary file."""
    if not path:
        raise TaskError("charlm needs a text file: --data FILE")
    file = Path(path)
    if not file.is_file():
        raise TaskError(f"--data {path}: no such file")
    raw = file.read_bytes()
    if not raw:
        raise TaskError(f"--data {path}: the file is empty")
    try:
        if b"\x00" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\x00"), raw.index(b"\x00") + 1, "NUL byte")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TaskError(f"--data {path}: not a UTF-8 text file (byte {error.start}: {error.reason})") from None
    return text, hashlib.sha256(raw).hexdigest()


def encode(text: str, vocab: str) -> torch.Tensor:
    """Indices of ``text``'s characters in ``vocab`` (a sorted string of distinct characters)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.frombuffer(vocab.encode("utf-32-le"), dtype=np.uint32)
    index = np.searchsorted(table, codes)
    unknown = (index >= len(table)) | (table[np.minimum(index, len(table) - 1)] != codes)
    if unknown.any():
        missing = sorted({chr(c) for c in codes[unknown]})
        raise TaskError(f"characters not in the model's vocabulary: {''.join(missing)!r}")
    return torch.from_numpy(index.astype(np.int64))


class CharLMTask(Task):
    """``lstmkit train charlm --data FILE``: next-character prediction, metric ``bpc``.

    ``info`` (the vocabulary and the file's sha256, saved in the run folder) rebuilds the model
    without the file (``lstmkit generate``); the file is then read only when data is needed, and
    must be the same file.
    """

    name = "charlm"
    metrics = ("bpc",)
    maximize = False
    stateful = True
    defaults = {"seq_len": 128, "hidden_size": 256, "batch_size": 32, "steps": 3000, "lr": 0.002,
                "eval_every": 250, "embed_dim": 64}
    EVAL_STREAMS = 16
    EVAL_CHUNK = 1024

    def __init__(self, config: dict, rank: int = 0, world_size: int = 1, info: dict | None = None) -> None:
        super().__init__(config, rank, world_size, info)
        self._splits, text = None, None
        if info is None:
            text, digest = read_text(config.get("data"))
            info = {"vocab": "".join(sorted(set(text))), "sha256": digest}
        self._info = info
        if text is not None:
            self._load(text)
        self.vocab = info["vocab"]
        self.vocab_size = len(self.vocab)
        self.input_size, self.output_size = config["embed_dim"], self.vocab_size

    def info(self) -> dict:
        return dict(self._info)

    def _load(self, text: str) -> None:
        streams, bptt = self.config["batch_size"] * self.world_size, self.config["seq_len"]
        bounds = {name: (int(lo * len(text)), int(hi * len(text))) for name, (lo, hi) in SPLITS.items()}
        need = streams * (bptt + 1) / 0.9
        if len(text) < max(need, 100):
            raise TaskError(
                f"--data {self.config['data']}: too short ({len(text)} characters); batch {streams} x "
                f"seq-len {bptt} needs at least {math.ceil(max(need, 100))} (90% of it for training)"
            )
        self._splits = {name: encode(text[lo:hi], self._info["vocab"]) for name, (lo, hi) in bounds.items()}
        train = self._splits["train"]
        length = len(train) // streams
        self._train = train[: length * streams].view(streams, length).t()  # (L, streams)
        self._per_epoch = (length - 1) // bptt

    def prepare(self) -> None:
        self._data()

    def _data(self) -> None:
        if self._splits is None:
            text, digest = read_text(self.config.get("data"))
            if digest != self._info["sha256"]:
                raise TaskError(f"--data {self.config['data']}: not the file this run was trained on (sha256 differs)")
            self._load(text)

    def starts_sequence(self, step: int) -> bool:
        self._data()
        return step % self._per_epoch == 0

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._data()
        bptt, start = self.config["seq_len"], (step % self._per_epoch) * self.config["seq_len"]
        columns = slice(self.rank * batch_size, (self.rank + 1) * batch_size)
        x = self._train[start : start + bptt, columns]  # (T, B) character indices
        y = self._train[start + 1 : start + bptt + 1, columns]  # (T, B) the next characters
        return x, y

    def eval_batches(self, split: str):
        """Chunks (x, y) of ``split`` cut into parallel streams; the state carries across chunks."""
        self._data()
        data = self._splits[split]
        streams = max(1, min(self.EVAL_STREAMS, (len(data) - 1) // 256))
        length = (len(data) - 1) // streams
        x = data[: length * streams].view(streams, length).t()  # (L, S)
        y = data[1 : length * streams + 1].view(streams, length).t()
        for start in range(0, length, self.EVAL_CHUNK):
            yield x[start : start + self.EVAL_CHUNK], y[start : start + self.EVAL_CHUNK]

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.reshape(-1, self.vocab_size).float(), target.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model, split: str, device: torch.device) -> dict[str, float]:
        state, nats, count = None, 0.0, 0
        for x, y in self.eval_batches(split):
            output, state = model(x.to(device), state)
            nats += float(F.cross_entropy(output.reshape(-1, self.vocab_size).float(), y.to(device).reshape(-1),
                                          reduction="sum"))
            count += y.numel()
        return {"bpc": nats / count / math.log(2)}

    @torch.no_grad()
    def generate(self, model, prime: str, length: int, temperature: float, generator: torch.Generator,
                 device: torch.device):
        """Sample ``length`` characters after ``prime``, one at a time, carrying the state.

        The prime runs through the LSTM in one call; then each sampled character is fed back as
        the next input (a (1, 1) sequence) with the state of the previous step. Yields characters.
        """
        x = encode(prime, self.vocab).to(device)[:, None]  # (T, 1)
        output, state = model(x)
        for _ in range(length):
            probs = torch.softmax(output[-1, 0].float() / temperature, dim=-1).cpu()  # (V,)
            index = int(torch.multinomial(probs, 1, generator=generator))
            yield self.vocab[index]
            output, state = model(torch.tensor([[index]], device=device), state)
