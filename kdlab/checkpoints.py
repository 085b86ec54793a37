"""Checkpoints without pickles: safetensors weights plus JSON metadata in the same file.

The safetensors header carries ``{"kdlab": "<json>"}`` with the architecture (class + config), the
caller's metadata (dataset, steps, seed, metrics...), the kdlab version and a SHA-256 checksum of
the tensors, so :func:`load` can rebuild the model and notice a damaged file. Files are written
atomically (temporary file, then rename).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from . import models
from .paths import data_root
from .utils import atomic_write_bytes, get_device, jsonable
from .version import __version__

FORMAT = "kdlab-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or does not match the model."""

    def __init__(self, path, problem: str):
        super().__init__(f"checkpoint {str(path)!r}: {problem}")
        self.path, self.problem = str(path), problem


def tensor_checksum(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor in sorted name order, then over the
    canonical JSON of ``metadata`` (without its ``checksum`` entry) when given."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if metadata is not None:
        rest = {k: v for k, v in metadata.items() if k != "checksum"}
        h.update(json.dumps(rest, sort_keys=True, allow_nan=True).encode())
    return h.hexdigest()


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Low level: write ``tensors`` and JSON ``metadata`` (plus format, version and checksum) atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = dict(jsonable(metadata), format=FORMAT, kdlab_version=__version__)
    meta = json.loads(json.dumps(meta, allow_nan=True))  # exactly what a reader will parse
    meta["checksum"] = {"algorithm": "sha256", "value": tensor_checksum(tensors, meta)}
    return atomic_write_bytes(path, st_save(tensors, metadata={"kdlab": json.dumps(meta, allow_nan=True)}))


def load_tensors(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Low level: read and verify a file written by :func:`save_tensors`; returns (tensors, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len])
        meta = json.loads(header["__metadata__"]["kdlab"])
    except (SafetensorError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"not a readable kdlab safetensors file (truncated or corrupted?): {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(path, f"metadata format is {found!r}, expected {FORMAT!r}")
    checksum = meta.get("checksum")
    expected = checksum.get("value") if isinstance(checksum, dict) else None
    actual = tensor_checksum(tensors, meta)
    if expected != actual:
        raise CheckpointError(path, f"checksum mismatch (stored {expected}, computed {actual}): "
                                    "the weights or the metadata are corrupted")
    return tensors, meta


def save(model: nn.Module, path, **metadata) -> Path:
    """Save a registered kdlab model with its architecture and ``metadata`` (JSON-able values:
    dataset, steps, seed, metrics...). Returns the path."""
    meta = {"architecture": models.architecture(model), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **metadata}
    return save_tensors(path, model.state_dict(), meta)


def metadata(path) -> dict:
    """The JSON metadata of a checkpoint (verifies the file)."""
    return load_tensors(path)[1]


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path="<memory>") -> nn.Module:
    """Copy ``state`` into ``model``; a missing, unexpected or wrongly shaped tensor raises
    :class:`CheckpointError` naming it."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = ([f"missing tensors {missing[:5]}"] if missing else []) + \
                ([f"unexpected tensors {unexpected[:5]}"] if unexpected else []) + \
                ([f"shape mismatch {shapes[:5]}"] if shapes else [])
        raise CheckpointError(path, f"does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state)
    return model


def load(path, model: nn.Module | None = None, device="cpu") -> nn.Module:
    """Rebuild the model saved at ``path`` (or fill ``model``), on ``device`` (any device spec of
    :func:`kdlab.utils.get_device`; the CPU unless asked), in eval mode.

    The metadata is attached as ``model.checkpoint_metadata``.
    """
    tensors, meta = load_tensors(path)
    if model is None:
        try:
            model = models.build(meta["architecture"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path, f"cannot rebuild the model from its metadata: {e}") from None
    load_state(model, tensors, path)
    model.checkpoint_metadata = meta
    return model.to(get_device(device)).eval()


def shipped(name: str, required: bool = True) -> Path | None:
    """Path of a checkpoint shipped in ``data/checkpoints/`` (``name`` without extension); when it
    is missing, ``FileNotFoundError`` listing what exists, or ``None`` with ``required=False``."""
    folder = data_root() / "checkpoints"
    path = folder / f"{name}.safetensors"
    if not path.exists():
        if not required:
            return None
        have = sorted(p.stem for p in folder.glob("*.safetensors"))
        raise FileNotFoundError(f"no shipped checkpoint {name!r} in {folder}; available: {', '.join(have) or 'none'}")
    return path


def file_size_mb(path) -> float:
    return os.path.getsize(path) / 1e6
