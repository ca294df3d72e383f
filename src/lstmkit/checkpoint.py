"""Checkpoints: one safetensors file per checkpoint, written atomically, loaded without pickle.

A checkpoint holds tensors under prefixes and a JSON document in the safetensors metadata:

    model.<name>            the model's state dict (``safetensors.torch.load_file`` reads it;
                            strip the prefix to load the weights anywhere)
    optimizer.<i>.<key>     the optimizer's per-parameter state tensors (e.g. Adam's exp_avg)
    <other>                 anything else the trainer keeps (RNG states, carried LSTM state)

    metadata["lstmkit"]     JSON: format, step, the optimizer's param_groups and non-tensor
                            state, and whatever the trainer adds
    metadata["sha256"]      digest of every tensor's name, dtype, shape and bytes

Writing goes to a temporary file in the same folder, which is fsynced and then renamed over the
target (``os.replace``), so a checkpoint on disk is always either the old one or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

FORMAT = "lstmkit-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message is one line for the user."""


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise CheckpointError('checkpoints need safetensors: pip install "lstmkit[train]"') from None
    return safetensors


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        sha.update(f"{name}/{t.dtype}/{tuple(t.shape)}".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict as (tensors, JSON-able rest)."""
    tensors, values = {}, {}
    for index, state in state_dict["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                values.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "values": values}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """The inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in rest["values"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``tensors`` (moved to CPU) and ``meta`` (JSON-able) to ``path`` atomically."""
    st = _safetensors()
    tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    metadata = {"lstmkit": json.dumps({"format": FORMAT, **meta}), "sha256": digest(tensors)}
    atomic_write(path, st.torch.save(tensors, metadata=metadata))


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the file is always either the old or the new content:
    a temporary file in the same folder, fsynced, renamed over ``path``, the rename fsynced."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it 0o600
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def load(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a checkpoint; a :class:`CheckpointError` if it is missing, corrupted
    or not an lstmkit checkpoint."""
    st = _safetensors()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with st.safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except Exception as error:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__})") from None
    try:
        meta = json.loads(metadata["lstmkit"])
        if meta.pop("format") != FORMAT:
            raise ValueError
    except (KeyError, ValueError, TypeError, AttributeError):
        raise CheckpointError(f"{path}: not an lstmkit checkpoint ({FORMAT})") from None
    if metadata.get("sha256") != digest(tensors):
        raise CheckpointError(f"{path}: corrupted (its contents do not match its checksum)")
    return tensors, meta


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` with the prefix removed."""
    return {name[len(prefix) + 1 :]: t for name, t in tensors.items() if name.startswith(prefix + ".")}
