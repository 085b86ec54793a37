"""Read named intermediate activations of any module through forward hooks, without editing
``forward``. Names are those of ``model.named_modules()`` (e.g. ``"blocks.up1"``).

    with FeatureTap(generator, ["blocks.up1", "blocks.up2"]) as tap:
        images = generator(z)
    tap.features["blocks.up1"]   # (N, C, H, W), still attached to the autograd graph
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def layer_names(model: nn.Module) -> list[str]:
    """Names that can be tapped (every named submodule)."""
    return [name for name, _ in model.named_modules() if name]


class FeatureTap:
    """Context manager recording the outputs of the named submodules on every forward pass.

    ``features[name]`` holds the latest output (not detached, so losses on features backpropagate;
    call ``.detach()`` for a frozen teacher). Hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]):
        self.names = list(names)
        modules = dict(model.named_modules())
        unknown = [n for n in self.names if n not in modules or not n]
        if unknown:
            raise ValueError(f"unknown layer name(s) {unknown} for {type(model).__name__}; "
                             f"valid names: {', '.join(layer_names(model))}")
        self._modules = [modules[n] for n in self.names]
        self._handles: list = []
        self.features: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "FeatureTap":
        for name, module in zip(self.names, self._modules):
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.features[name] = output
        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def features(model: nn.Module, names: Iterable[str], *inputs, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``model(*inputs, **kwargs)`` once and return ``(output, {name: activation})``."""
    with FeatureTap(model, names) as tap:
        out = model(*inputs, **kwargs)
    return out, dict(tap.features)
