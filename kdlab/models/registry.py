"""The model registry: :mod:`kdlab.checkpoints` rebuilds any registered model from the
``{"class": ..., "config": ...}`` stored in its metadata."""
from __future__ import annotations

from torch import nn

MODELS: dict[str, type[nn.Module]] = {}


def register(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make ``cls`` rebuildable from ``{"class": cls.__name__, "config": ...}``.
    A registered class stores its constructor arguments in ``self.config``."""
    MODELS[cls.__name__] = cls
    return cls


def build(architecture: dict) -> nn.Module:
    """``{"class": "Generator", "config": {...}}`` -> a freshly initialised model."""
    name = architecture.get("class")
    if name not in MODELS:
        raise ValueError(f"model class {name!r} is unknown; known classes: {', '.join(sorted(MODELS))}")
    return MODELS[name](**architecture.get("config", {}))


def architecture(model: nn.Module) -> dict:
    """The inverse of :func:`build`: ``{"class": ..., "config": ...}`` of a registered model."""
    if type(model).__name__ not in MODELS or not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} is not a registered kdlab model "
                        f"(registered: {', '.join(sorted(MODELS))})")
    return {"class": type(model).__name__, "config": dict(model.config)}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
